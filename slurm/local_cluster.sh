#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for CI and for trying slurm/jbond_gemma.sh without
# a cluster. Needs root and Debian (apt-get). Idempotent: running it again restarts the daemons.
#
#   sudo bash slurm/local_cluster.sh          # install slurm-wlm + munge if missing, start the daemons
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=0 slurm/jbond_gemma.sh
#
# Choices that matter (measured on Debian 12, Slurm 22.05):
# - no systemd in containers: munged, slurmctld and two slurmd are started by hand;
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: the cgroup plugins need a cgroup.conf and,
#   without it, steps fail while the job still reports COMPLETED;
# - both nodes are 127.0.0.1 on their own ports (Debian's build allows several slurmd per host); their
#   names do not resolve, so the runtime takes MASTER_ADDR from the node's NodeAddr (scontrol);
# - RealMemory stays below what `slurmd -C` reports (more drains the node as "Low RealMemory").
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
pkill -x munged 2>/dev/null || true
sleep 1

mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -f /etc/munge/munge.key ] || /usr/sbin/mungekey --create >/dev/null 2>&1 || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
su -s /bin/sh munge -c /usr/sbin/munged

CPUS=$(nproc)
MEMORY=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 4 ))  # MB per node, well below the total
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /var/lib/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits until its previous credential expires (120 s by default): keep it short here.
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldPidFile=/run/slurmctld.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldLogFile=/var/log/slurm/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=n1 NodeAddr=127.0.0.1 Port=6818 CPUs=${CPUS} RealMemory=${MEMORY} State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port=6819 CPUs=${CPUS} RealMemory=${MEMORY} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
mkdir -p /var/lib/slurm/slurmd-n1 /var/lib/slurm/slurmd-n2

slurmctld
slurmd -N n1
slurmd -N n2

for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qv -e down -e drain -e unknown && \
       [ "$(sinfo -h -N -o '%T' | grep -c -e idle -e mixed -e allocated)" -ge 2 ]; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "local_cluster.sh: the nodes did not come up:" >&2
sinfo -N -l >&2 || true
tail -20 /var/log/slurm/*.log >&2 || true
exit 1

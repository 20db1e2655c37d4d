"""The README's commands against the code, so that a README command the code refuses fails CI (its own
HTTP-reward command was refused for months): every command of its bash blocks, every `megatron-bond ...`
span and every OVERRIDES / key=value span of its prose.

- run for real (seconds, no model): `megatron-bond config` (what `train` checks before it builds a model:
  config/validate.py and resolve.py's resolve_present) on each recipe with its overrides, and
  tools/plan_memory.py as written;
- checked, not run (minutes, GPUs or a cluster): `make` targets exist in the Makefile; `pip install`'s
  constraint files exist and its extras are declared; the converters'
  command lines parse with their own parsers; `megatron-bond train` lines parse with the CLI's and pass
  `config`; `sbatch slurm/jbond_gemma.sh` names an existing script and its RECIPE and OVERRIDES pass `config`.
A command of another kind fails the test until a rule for it is added here. `tail -f` is the one command
that is not the project's.
"""

import importlib.util
import re
import shlex
import subprocess
import sys

import pytest

from megatron_bond.cli import build_parser, main
from megatron_bond.convert.tool import tool_parser
from tests.harness import ROOT

README = (ROOT / "README.md").read_text()
PROSE_RECIPE = "recipes/jbond_gemma_7b.yaml"  # the recipe the README's "Teams' additions" extend
OVERRIDE = re.compile(r"^~?[a-z_]+(\.[a-z_]+)+(=\S*)?$")


def _block_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def _span_commands() -> list[str]:
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    return [s for s in spans if s.startswith("megatron-bond ")]


def _prose_overrides() -> list[list[str]]:
    """OVERRIDES="..." and spans of key=value words in the prose (each a change of the 7B recipe)."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    found = [shlex.split(v) for v in re.findall(r'OVERRIDES="([^"]*)"', prose)]
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = span.split()
        if "OVERRIDES=" not in span and all(OVERRIDE.match(w) and "=" in w for w in words):
            found.append(words)
    return found


def _config(recipe: str | None, overrides: list[str], capsys) -> None:
    argv = ["config", *([recipe] if recipe else []), *overrides, "--get", "run.name"]
    code = main(argv)
    assert code == 0, (argv, capsys.readouterr().err)


def _tool(script: str):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py").replace("/", "."), ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_has_commands_to_check():
    assert len(_block_commands()) >= 8 and _span_commands() and len(_prose_overrides()) >= 3


@pytest.mark.parametrize("command", _block_commands() + _span_commands())
def test_each_readme_command_is_accepted(command, capsys):
    words = shlex.split(command)
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program, args = words[0], words[1:]
    if program == "make":
        makefile = (ROOT / "Makefile").read_text()
        assert all(re.search(rf"^{re.escape(t)}:", makefile, re.M) for t in args), command
    elif program == "pip" and args[0] == "install":  # constraint files exist, extras are declared
        pyproject = (ROOT / "pyproject.toml").read_text()
        for flag, value in zip(args, args[1:]):
            if flag == "-c":
                assert (ROOT / value).is_file(), command
        for extra in re.findall(r"\.\[([a-z,-]+)\]", command):
            assert all(re.search(rf"^{e} = ", pyproject, re.M) for e in extra.split(",")), command
    elif program == "tail":
        pass  # not the project's
    elif program == "sbatch":
        script = [a for a in args if not a.startswith("-")]
        assert script == ["slurm/jbond_gemma.sh"] and (ROOT / script[0]).is_file(), command
        _config(env["RECIPE"], shlex.split(env.get("OVERRIDES", "")), capsys)
    elif program == "megatron-bond" or program.endswith("/megatron-bond"):
        parsed = build_parser().parse_args(args)
        assert parsed.command in ("config", "train"), command
        _config(parsed.recipe, parsed.overrides, capsys)
    elif program.endswith("python") and args[0] == "tools/plan_memory.py":
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.splitlines()[-1] == "verdict: fits", (command, done.stderr)
    elif program.endswith("python") and args[0] in ("tools/convert_hf_to_megatron.py", "tools/convert_megatron_to_hf.py"):
        module = _tool(args[0])
        tool_parser(args[0], module.__doc__, module.SOURCE, getattr(module, "OPTIONS", None)).parse_args(args[1:])
    else:
        pytest.fail(f"the README command {command!r} has no rule in {__file__}: add one")


@pytest.mark.parametrize("overrides", _prose_overrides(), ids=" ".join)
def test_each_readme_override_is_accepted_by_the_recipe(overrides, capsys):
    """The README's additions (an HTTP reward, Hugging Face exports, TensorBoard, vLLM) on the 7B recipe,
    as its sbatch command would pass them."""
    _config(PROSE_RECIPE, overrides, capsys)

"""A reward service for the tests (standard library only): tiny_reward of the POSTed token ids, with faults
scripted per request ("503", "429", "400", "slow:SECONDS", "drop", "count", "nan", then normal answers), and
a death on cue (``die_when``: the first request that finds it true is dropped and the server closes)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_bond.train.rewards import tiny_reward


class RewardServer:
    def __init__(self, faults: list[str] = (), token: str | None = None, die_when=None, tls: tuple | None = None):
        self.faults, self.token, self.die_when = list(faults), token, die_when
        self.dead = False
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    fault = server.faults.pop(0) if server.faults else ""
                    if server.dead or (server.die_when is not None and server.die_when()):
                        server.dead, fault = True, "drop"
                        threading.Thread(target=server.stop, daemon=True).start()
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(body, fault)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body, fault):
                if fault == "drop":  # close the connection without a response
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault.startswith("slow:"):
                    time.sleep(float(fault[5:]))
                if fault in ("503", "429", "400") or (server.token and self.headers.get("Authorization") != f"Bearer {server.token}"):
                    code = int(fault) if fault else 401
                    self.send_response(code)
                    if code == 429:
                        self.send_header("Retry-After", "0.1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rewards = tiny_reward(body["prompts"], body["responses"])
                if fault == "count":
                    rewards = rewards[:-1]
                if fault == "nan":
                    rewards[0] = float("nan")
                data = json.dumps({"rewards": rewards}).encode()
                time.sleep(0.01)  # long enough for concurrent requests to overlap
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:  # (certificate file, key file)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_port}/reward"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def stop(self):
        with self.lock:
            if self.httpd is None:
                return
            httpd, self.httpd = self.httpd, None
        httpd.shutdown()
        httpd.server_close()  # later connections are refused

    def __exit__(self, *exc):
        self.stop()

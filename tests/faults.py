"""Faults on demand, for tests and benchmarks.

- `FaultyProxy`: put it between a client and a real endpoint (moto_server) to make some
  requests fail with 503 SlowDown, or to drop every connection for a while (an outage).
- `Chaos`: interrupts a running launch the way spot preemptions do, by sending SIGKILL or
  SIGTERM to its Ray Train worker processes at chosen steps.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psutil

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy:
    """Forwards every request to `upstream`. `fail_every=N` answers every Nth request with 503;
    `outage(seconds)` resets every connection for that long. Counts what it did."""

    def __init__(self, upstream: str, fail_every: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_every = fail_every
        self.down_until = 0.0
        self.requests = 0
        self.failed = 0
        self.reset = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                verdict = proxy._verdict()
                if verdict == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if verdict == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")
                }
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _verdict(self) -> str | None:
        with self._lock:
            self.requests += 1
            if time.time() < self.down_until:
                self.reset += 1
                return "reset"
            if self.fail_every and self.requests % self.fail_every == 0:
                self.failed += 1
                return "503"
            return None

    def outage(self, seconds: float) -> None:
        self.down_until = time.time() + seconds

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def train_workers(started_after: float = 0.0) -> list[psutil.Process]:
    """RayTrainWorker processes started after `started_after` (epoch seconds): the current
    try's, not an idle or leftover worker of an earlier run or another Ray instance."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if (
                "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
                and p.info["create_time"] >= started_after
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def rows_after(path: Path, offset: int) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        f.seek(offset)
        return [json.loads(x) for x in f.read().splitlines() if x.strip()]


class Chaos(threading.Thread):
    """Interrupts the run `len(plan)` times: each entry is (signal, steps this try logs first)."""

    def __init__(self, run_dir: Path, plan: list[tuple[signal.Signals, int]]) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.plan = run_dir, plan
        self.done = threading.Event()
        self.log: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.error = e

    def _run(self) -> None:
        from orchestrator.storage.layout import read_failures

        events = self.run_dir / "events.jsonl"
        offset = 0
        try_start = time.time() - 1.0  # this run's first workers start after the thread
        for i, (sig, after) in enumerate(self.plan):
            while len(rows := rows_after(events, offset)) < after:
                if self.done.wait(0.05):
                    return
            # This try's workers: rank 0 by the pid in the run's timeline (its last row is a
            # step this try logged; Ray may seat an actor in a worker process started earlier),
            # and the workers its raylet started since the try began. Never a RayTrainWorker of
            # another Ray instance on this machine (another test or launch running alongside).
            timeline = rows_after(self.run_dir / "timeline.jsonl", 0)
            rank0 = timeline[-1]["pid"] if timeline else None
            ours = [w for w in train_workers() if w.pid == rank0]
            assert ours, f"rank 0 of this try (pid {rank0}) is not running"
            raylet = ours[0].ppid()
            workers = ours + [
                w for w in train_workers(try_start) if w.pid != rank0 and w.ppid() == raylet
            ]
            victim = random.choice(workers)
            t = time.time()
            os.kill(victim.pid, sig)
            self.log.append(
                {"signal": sig.name, "at_step": rows[-1]["step"], "pid": victim.pid, "time": t}
            )
            while len(read_failures(self.run_dir)) < i + 1:  # the launcher saw it
                if self.done.wait(0.1):
                    return
            offset = events.stat().st_size
            try_start = t  # the next try's workers start after this kill


def start_moto_server() -> tuple[str, subprocess.Popen]:
    """A moto_server (a real HTTP AWS endpoint) on a free 127.0.0.1 port: (url, process)."""
    import urllib.request

    from orchestrator.launch.ray_session import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return url, proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("moto_server did not start")


def prometheus_on_all_interfaces(temp_dir: str) -> list[str]:
    """Ports of the cluster's processes (those writing under its temp dir) listening on every
    interface that answer Prometheus text (Ray's exporters: unauthenticated, so they must not
    face the network). Other Ray sessions on the machine are not this cluster's."""
    import urllib.request

    import psutil

    def ours(pid: int | None) -> bool:
        try:
            return pid is not None and any(
                f.path.startswith(temp_dir) for f in psutil.Process(pid).open_files()
            )
        except psutil.Error:
            return False

    ports = {c.laddr.port: c.pid for c in psutil.net_connections("tcp")
             if c.status == "LISTEN" and c.laddr.ip in ("0.0.0.0", "::") and ours(c.pid)}  # fmt: skip
    found = []
    for port, pid in sorted(ports.items()):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                body = r.read(4096)
        except Exception:  # noqa: BLE001 - not HTTP, or no /metrics
            continue
        if b"# HELP" in body or b"# TYPE" in body:  # named by its process, to say whose it is
            try:
                who = " ".join(psutil.Process(pid).cmdline())[:200]
            except psutil.Error:
                who = "?"
            found.append(f"{port}: pid {pid} {who}")
    return found

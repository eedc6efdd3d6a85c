"""Spot notices from a local HTTP server playing the EC2 (IMDSv2) and GCP metadata services,
and from SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.checkpoint.notice import EC2_ENV, GCP_ENV, NoticeWatcher

TOKEN = "tok-123"


class Metadata:
    """One server answering both clouds' paths; `armed` schedules the interruption."""

    def __init__(self) -> None:
        self.armed = False
        self.requests: list[tuple[str, str, Message]] = []
        self.expire_token_once = False
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):  # noqa: N802
                meta.requests.append(("PUT", self.path, self.headers))
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._send(200, TOKEN)
                else:
                    self._send(400)

            def do_GET(self):  # noqa: N802
                meta.requests.append(("GET", self.path, self.headers))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                        return self._send(401)
                    if meta.expire_token_once:
                        meta.expire_token_once = False
                        return self._send(401)
                    if not meta.armed:
                        return self._send(404)
                    doc = {"action": "terminate", "time": "2026-11-24T04:00:00Z"}
                    return self._send(200, json.dumps(doc))
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403)
                    return self._send(200, "TRUE" if meta.armed else "FALSE")
                self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata():
    m = Metadata()
    yield m
    m.close()


def wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("cloud", ["ec2", "gcp"])
def test_metadata_notice_arrives_when_the_interruption_is_scheduled(cloud, metadata, monkeypatch):
    dead = "http://127.0.0.1:9"  # the other cloud: named, but nothing listens
    monkeypatch.setenv(EC2_ENV, metadata.url if cloud == "ec2" else dead)
    monkeypatch.setenv(GCP_ENV, metadata.url if cloud == "gcp" else dead)
    w = NoticeWatcher(poll_s=0.05).start()
    try:
        assert wait_for(lambda: len(metadata.requests) >= 4)
        assert w.notice() is None  # polled, nothing scheduled yet
        metadata.armed = True
        assert wait_for(lambda: w.notice() is not None)
        n = w.notice()
        assert n.source == cloud
        assert ("terminate" in n.detail) if cloud == "ec2" else ("TRUE" in n.detail)
    finally:
        w.stop()
    if cloud == "ec2":  # IMDSv2: a token first, then every GET carries it
        assert metadata.requests[0][:2] == ("PUT", "/latest/api/token")
        gets = [r for r in metadata.requests if r[0] == "GET"]
        assert gets and all(r[2].get("X-aws-ec2-metadata-token") == TOKEN for r in gets)


def test_an_expired_imds_token_is_renewed(metadata, monkeypatch):
    monkeypatch.setenv(EC2_ENV, metadata.url)
    monkeypatch.setenv(GCP_ENV, "http://127.0.0.1:9")
    metadata.expire_token_once = True
    metadata.armed = True
    w = NoticeWatcher(poll_s=0.05).start()
    try:
        assert wait_for(lambda: w.notice() is not None)
    finally:
        w.stop()
    puts = [r for r in metadata.requests if r[0] == "PUT"]
    assert len(puts) == 2  # the 401 made it fetch a new token


def test_no_metadata_service_means_no_polling(monkeypatch):
    monkeypatch.delenv(EC2_ENV, raising=False)
    monkeypatch.delenv(GCP_ENV, raising=False)
    monkeypatch.setattr(
        "orchestrator.checkpoint.notice.Ec2Metadata.poll",
        lambda self: (_ for _ in ()).throw(OSError("no route")),
    )
    monkeypatch.setattr(
        "orchestrator.checkpoint.notice.GcpMetadata.poll",
        lambda self: (_ for _ in ()).throw(OSError("no route")),
    )
    w = NoticeWatcher(poll_s=0.01).start()
    w._thread.join(timeout=5)
    assert not w._thread.is_alive() and w.sources == [] and w.notice() is None
    w.stop()


def test_sigterm_becomes_a_notice_and_the_process_lives(monkeypatch):
    monkeypatch.setenv(EC2_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(GCP_ENV, "http://127.0.0.1:9")
    before = signal.getsignal(signal.SIGTERM)
    w = NoticeWatcher(poll_s=0.05, sigterm_grace_s=3600).start()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: w.notice() is not None)
        assert w.notice().source == "sigterm"
    finally:
        w.stop()
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_after_the_grace_period_sigterm_does_what_it_would_have_done(tmp_path):
    """A loop that never exits after the notice is not kept alive forever."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from orchestrator.checkpoint.notice import NoticeWatcher
        os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9"
        os.environ["GCE_METADATA_HOST"] = "http://127.0.0.1:9"
        w = NoticeWatcher(poll_s=0.05, sigterm_grace_s=0.5).start()
        os.kill(os.getpid(), signal.SIGTERM)
        while w.notice() is None:
            time.sleep(0.01)
        print("noticed", w.notice().source, flush=True)
        time.sleep(30)
        print("still alive", flush=True)
        """
    )
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert "noticed sigterm" in p.stdout and "still alive" not in p.stdout
    assert p.returncode == -signal.SIGTERM
    assert time.time() - t0 < 20

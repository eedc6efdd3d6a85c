"""Spot interruption notices: learn that this node is about to go, early enough to save.

Four sources, whichever comes first:

- EC2 instance metadata (IMDSv2): `/latest/meta-data/spot/instance-action` answers 404 until
  AWS schedules the interruption, then `{"action": "terminate", "time": "..."}` (~2 min ahead).
  Endpoint: `AWS_EC2_METADATA_SERVICE_ENDPOINT` (as boto3), default http://169.254.169.254.
- GCP metadata: `/computeMetadata/v1/instance/preempted` turns "TRUE" (~30 s ahead).
  Host: `GCE_METADATA_HOST` (as google-auth), default metadata.google.internal.
- SIGTERM: what the OS (or a Kubernetes kubelet) sends before shutdown.
- Ray's drain notice (`ray drain-node`, the autoscaler reclaiming a node): Ray Train passes it to
  the workers' train context; `ray_drain_notice()` reads it.

The watcher polls the metadata endpoints from a daemon thread; the training loop calls
`notice()` once per step (a cheap read) and agrees with the other ranks before acting.
A metadata endpoint that does not answer at start (not on that cloud) is not polled again,
unless its environment variable names it explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

EC2_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
GCP_ENV = "GCE_METADATA_HOST"


@dataclass(frozen=True)
class Notice:
    source: str
    """ec2 | gcp | sigterm | ray_drain"""
    received_at: float
    detail: str = ""


_DOOMED = re.compile(r"\[doomed node ([0-9a-f]+) deadline ([0-9.]+)\]")


def doomed_tag(node_id: str, deadline: float) -> str:
    """What a rank that received a notice says about its node in its Preempted error: the
    launcher drains that node before the next try (`doomed_nodes`)."""
    return f"[doomed node {node_id} deadline {deadline:.0f}]"


def doomed_nodes(text: str) -> dict[str, float]:
    """Pure: {node id: deadline (unix s)} of every doomed-node tag in `text` (the failure's
    detail), the earliest deadline per node."""
    out: dict[str, float] = {}
    for node, deadline in _DOOMED.findall(text):
        out[node] = min(out.get(node, float("inf")), float(deadline))
    return out


def _http(req: urllib.request.Request, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - metadata URL
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


class Ec2Metadata:
    """IMDSv2: a session token first, then the spot instance-action document."""

    def __init__(self, endpoint: str, timeout: float = 1.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0

    def _get_token(self) -> str:
        if self._token is None or time.time() > self._token_expires:
            req = urllib.request.Request(
                f"{self.endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
            )
            status, body = _http(req, self.timeout)
            if status != 200:
                raise OSError(f"IMDSv2 token request answered {status}")
            self._token, self._token_expires = body, time.time() + 21000
        return self._token

    def poll(self) -> str | None:
        """The instance-action document when an interruption is scheduled, else None."""
        req = urllib.request.Request(
            f"{self.endpoint}/latest/meta-data/spot/instance-action",
            headers={"X-aws-ec2-metadata-token": self._get_token()},
        )
        status, body = _http(req, self.timeout)
        if status == 401:  # token expired early
            self._token = None
            return None
        if status == 200 and body:
            doc = json.loads(body)
            if doc.get("action") in ("terminate", "stop", "hibernate"):
                return body
        return None


class GcpMetadata:
    def __init__(self, host: str, timeout: float = 1.0) -> None:
        base = host if host.startswith("http") else f"http://{host}"
        self.url = f"{base.rstrip('/')}/computeMetadata/v1/instance/preempted"
        self.timeout = timeout

    def poll(self) -> str | None:
        req = urllib.request.Request(self.url, headers={"Metadata-Flavor": "Google"})
        status, body = _http(req, self.timeout)
        return "preempted=TRUE" if status == 200 and body.strip().upper() == "TRUE" else None


class NoticeWatcher:
    """Watches every notice source; `notice()` says whether (and why) this node is going away.

    Args:
        poll_s: seconds between metadata polls.
        sigterm_grace_s: after a SIGTERM, how long the loop has to save and exit before the
            process exits the way it would have without us.
    """

    def __init__(self, poll_s: float = 2.0, sigterm_grace_s: float = 90.0) -> None:
        self.poll_s = poll_s
        self.sigterm_grace_s = sigterm_grace_s
        self._notice: Notice | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restore_sigterm: Callable[[], object] | None = None
        self.sources: list[tuple[str, Ec2Metadata | GcpMetadata]] = []
        self._thread: threading.Thread | None = None
        self._fallback: threading.Timer | None = None

    # ------------------------------------------------------------------ public
    def start(self) -> NoticeWatcher:
        self._install_sigterm()
        self._thread = threading.Thread(target=self._run, name="spot-notice", daemon=True)
        self._thread.start()
        return self

    def notice(self) -> Notice | None:
        if self._notice is None:
            drain = ray_drain_notice()
            if drain:
                self._set(Notice("ray_drain", time.time(), drain))
        return self._notice

    def stop(self) -> None:
        """Stop watching. A pending SIGTERM fallback is cancelled: the caller is exiting."""
        self._stop.set()
        if self._fallback is not None:
            self._fallback.cancel()
        if self._restore_sigterm:
            self._restore_sigterm()
            self._restore_sigterm = None

    # ------------------------------------------------------------------ internals
    def _set(self, notice: Notice) -> None:
        with self._lock:
            if self._notice is None:
                self._notice = notice
                log.warning("spot notice from %s: %s", notice.source, notice.detail)

    def _discover(self) -> None:
        """Keep the metadata sources that answer here (or that the environment names)."""
        candidates: list[tuple[str, Ec2Metadata | GcpMetadata, bool]] = [
            (
                "ec2",
                Ec2Metadata(os.environ.get(EC2_ENV, "http://169.254.169.254")),
                EC2_ENV in os.environ,
            ),
            (
                "gcp",
                GcpMetadata(os.environ.get(GCP_ENV, "metadata.google.internal")),
                GCP_ENV in os.environ,
            ),
        ]
        for name, source, explicit in candidates:
            if explicit:
                self.sources.append((name, source))
                continue
            try:
                source.timeout = 0.3
                source.poll()
                source.timeout = 1.0
                self.sources.append((name, source))
            except Exception:  # noqa: BLE001 - not on this cloud
                continue

    def _run(self) -> None:
        self._discover()
        while not self._stop.is_set() and self._notice is None and self.sources:
            for name, source in self.sources:
                try:
                    detail = source.poll()
                except Exception as e:  # noqa: BLE001 - a flaky endpoint is no notice
                    log.debug("%s metadata poll failed: %s", name, e)
                    continue
                if detail:
                    self._set(Notice(name, time.time(), detail))
            self._stop.wait(self.poll_s)

    def _on_sigterm(self, fallback: Callable[[], None]) -> None:
        self._set(Notice("sigterm", time.time(), "SIGTERM received"))
        if self._fallback is None:
            self._fallback = threading.Timer(self.sigterm_grace_s, fallback)
            self._fallback.daemon = True
            self._fallback.start()

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into a notice. In a plain process: a signal handler. In a Ray worker the
        training loop runs in a thread (which may not set handlers) and Ray's own SIGTERM handler
        exits the process at once; we hook the function that handler calls, so that it records
        a notice first and exits only after `sigterm_grace_s` (or when our loop exits)."""
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            expired = threading.Event()

            def handler(signum: int, frame: FrameType | None) -> None:
                if not expired.is_set():
                    self._on_sigterm(exit_now)
                elif callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_IGN:
                    return
                else:  # default disposition: die by SIGTERM, as without us
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    os.kill(os.getpid(), signal.SIGTERM)

            def exit_now() -> None:  # from the timer thread: the handler runs in the main one
                expired.set()
                os.kill(os.getpid(), signal.SIGTERM)

            signal.signal(signal.SIGTERM, handler)
            self._restore_sigterm = lambda: signal.signal(signal.SIGTERM, previous)
            return
        try:
            import ray._private.worker as ray_worker

            original = ray_worker.raise_sys_exit_with_custom_error_message
            current = signal.getsignal(signal.SIGTERM)
            if "main_loop" not in getattr(current, "__qualname__", ""):
                raise RuntimeError(f"unexpected SIGTERM handler {current!r}")
        except Exception as e:  # noqa: BLE001
            log.warning("SIGTERM will not give a spot notice here: %s", e)
            return

        def exit_via_ray() -> None:
            ray_worker.raise_sys_exit_with_custom_error_message = original
            os.kill(os.getpid(), signal.SIGTERM)

        def hooked(message: str, exit_code: int = 1) -> None:
            if message.startswith("The process receives a SIGTERM"):
                self._on_sigterm(exit_via_ray)
                return
            original(message, exit_code)

        ray_worker.raise_sys_exit_with_custom_error_message = hooked

        def restore() -> None:
            ray_worker.raise_sys_exit_with_custom_error_message = original

        self._restore_sigterm = restore


def ray_drain_notice() -> str | None:
    """Ray Train's preemption info for this worker (set when Ray drains its node), if any."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        info = get_train_context().preemption_context.preemption_info
    except Exception:  # noqa: BLE001 - not in a Ray Train worker
        return None
    if info is None:
        return None
    return f"nodes {info.preempted_node_ids} drained, deadline_ms={info.deadline_ms}"

"""A Ray cluster on this machine whose worker nodes share no disk with the head, for tests and
benchmarks of the multi-node storage contract.

The head (`--num-cpus=0`, so no training worker lands there) runs where the test runs. Each
worker node is `ray start --block` inside its own mount namespace (`unshare --mount`, needs
root), with private empty tmpfs mounts over the head's folders (`hidden()`): it sees neither the
head's folders (its Ray temp dir with the job driver's working dir, its scratch and cache) nor
any run folder, as a GPU node with its own disks would not. Network, Ray, S3 (moto) and MLflow on 127.0.0.1 are shared; only
the filesystem differs. A node is "preempted" by SIGKILL of every process of its session.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def can_isolate() -> str | None:
    """None when worker nodes with private disks can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare --mount failed: {probe.stderr.decode().strip()[:200]}"
    return None


@dataclass
class Node:
    label: str
    proc: subprocess.Popen
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # setsid: the session leader is the process we started


class IsolatedCluster:
    """`with IsolatedCluster(tmp, env) as c: c.add_worker("w0") ...`; everything it started is
    killed on exit."""

    def __init__(self, workdir: Path, env: dict[str, str], isolate: bool = True) -> None:
        from orchestrator.launch.ray_session import free_port

        self.workdir = workdir
        self.isolate = isolate
        self.temp_dir = tempfile.mkdtemp(prefix="raymn-", dir="/tmp")  # short: socket paths
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            **env,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        # Ray 2.60's token auth: every node and client of the cluster presents the same token
        # (~/.ray/auth_token, which `ray start --head` creates; the CLI needs the mode set).
        self.env["RAY_AUTH_MODE"] = "token"
        self.workers: dict[str, Node] = {}

    def __enter__(self) -> IsolatedCluster:
        from orchestrator.launch.ray_session import free_port

        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray, "start", "--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
            "--labels=instance_type=local-2vcpu,market=on_demand",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, env=self.env, stdout=subprocess.DEVNULL)
        self._wait_dashboard()
        return self

    def _wait_dashboard(self, timeout_s: float = 60.0) -> None:
        from orchestrator.launch.cluster_state import dashboard_alive

        deadline = time.time() + timeout_s
        while not dashboard_alive(self.dashboard_url):
            if time.time() > deadline:
                raise TimeoutError(f"no dashboard at {self.dashboard_url}")
            time.sleep(0.5)

    def add_worker(self, label: str, cpus: int = 1, timeout_s: float = 90.0) -> Node:
        """A worker node with its own empty /tmp and runs/ (private tmpfs mounts), unless the
        cluster was made with isolate=False. Returns once the node has joined; a node whose
        start timed out (a loaded machine) is started once more."""
        for attempt in (1, 2):
            node = self._start_worker(label, cpus)
            deadline = time.time() + timeout_s
            while time.time() < deadline and node.proc.poll() is None:
                if label in self.node_ids():
                    return node
                time.sleep(0.5)
            self.kill(label)
            if attempt == 2:
                raise TimeoutError(
                    f"worker node {label} did not join: {node.log.read_text(errors='replace')[-3000:]}"
                )
        raise AssertionError("unreachable")

    def hidden(self) -> list[str]:
        """The head's folders a worker node must not see: the project's runs/, the head's Ray
        temp dir (the job driver's working dir is in it), and this machine's scratch and cache
        (the launcher prepares data and builds bases there). Not the project or its venv: the
        image every node runs."""
        from orchestrator.storage.layout import default_scratch

        cache = os.environ.get("ORCHESTRATOR_CACHE") or str(Path.home() / ".cache" / "orchestrator")
        return [str(REPO / "runs"), self.temp_dir, default_scratch(), cache]

    def _start_worker(self, label: str, cpus: int) -> Node:
        ray = str(Path(sys.executable).with_name("ray"))
        hide = self.hidden()
        for h in hide:
            Path(h).mkdir(parents=True, exist_ok=True)
        mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(h)}" for h in hide)
        if not self.isolate:  # the same shape of cluster on one disk (the baseline)
            mounts = "true"
        start = shlex.join([
            ray, "start", f"--address={self.address}", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--labels=node={label},instance_type=local-2vcpu,market=on_demand", "--block",
        ])  # fmt: skip
        log = self.workdir / f"node-{label}.log"
        proc = subprocess.Popen(
            ["setsid", "unshare", "--mount", "--propagation", "private", "bash", "-c",
             f"{mounts} && exec {start}"],
            env=self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        node = Node(label, proc, log)
        self.workers[label] = node
        return node

    def node_ids(self, alive: bool = True) -> dict[str, str]:
        """{label: Ray node id} of the worker nodes (alive, or all)."""
        import json
        import urllib.request

        from orchestrator.launch.named_clusters import auth_headers

        url = f"{self.dashboard_url}/api/v0/nodes?detail=1&limit=1000"
        req = urllib.request.Request(url, headers=auth_headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            rows = json.loads(r.read())["data"]["result"]["result"]
        return {
            (n.get("labels") or {}).get("node"): n["node_id"]
            for n in rows
            if (n.get("labels") or {}).get("node") and (n["state"] == "ALIVE" or not alive)
        }

    def wait_workers(self, n: int, timeout_s: float = 90.0) -> dict[str, str]:
        deadline = time.time() + timeout_s
        while len(ids := self.node_ids()) < n:
            if time.time() > deadline:
                logs = "\n".join(
                    w.log.read_text(errors="replace")[-2000:] for w in self.workers.values()
                )
                raise TimeoutError(f"{len(ids)} of {n} worker nodes joined; logs:\n{logs}")
            time.sleep(0.5)
        return ids

    def look(self, node_id: str, paths: list[str], timeout_s: float = 120.0) -> dict:
        """What a Ray worker process on node `node_id` sees: for each path, whether it exists
        (and, for folders, what is in them). Run as a task pinned to that node, from a job
        submitted through the Jobs API (a driver on the head, like the launcher's)."""
        import json

        from ray.job_submission import JobSubmissionClient

        from orchestrator.launch.named_clusters import auth_headers

        script = (
            "import json, os, ray\n"
            "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A\n"
            "@ray.remote(num_cpus=0)\n"
            "def look(paths):\n"
            "    return {'node': ray.get_runtime_context().get_node_id(), 'paths': {p: (sorted("
            "os.listdir(p)) if os.path.isdir(p) else os.path.exists(p)) for p in paths}}\n"
            f"out = ray.get(look.options(scheduling_strategy=A({node_id!r}, soft=False))"
            f".remote({paths!r}))\n"
            "print('LOOK ' + json.dumps(out))\n"
        )
        c = JobSubmissionClient(self.dashboard_url, headers=auth_headers())
        sid = c.submit_job(entrypoint=f"python -c {shlex.quote(script)}")
        deadline = time.time() + timeout_s
        while str(c.get_job_status(sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            if time.time() > deadline:
                raise TimeoutError(f"look job {sid} did not end: {c.get_job_logs(sid)[-2000:]}")
            time.sleep(0.5)
        logs = c.get_job_logs(sid)
        lines = [x for x in logs.splitlines() if x.startswith("LOOK ")]
        if not lines:
            raise RuntimeError(f"look job {sid} failed: {logs[-3000:]}")
        return json.loads(lines[-1][5:])

    def kill(self, label: str) -> int:
        """A preemption: SIGKILL every process of the node's session (raylet, agents, workers)."""
        sid = self.workers[label].sid
        killed = 0
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                    p.send_signal(signal.SIGKILL)
                    killed += 1
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return killed

    def __exit__(self, *exc) -> None:
        from orchestrator.launch.named_clusters import kill_processes

        for label in list(self.workers):
            self.kill(label)
        kill_processes(self.temp_dir)
        for node in self.workers.values():
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

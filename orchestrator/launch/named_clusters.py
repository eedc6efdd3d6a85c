"""Named clusters from infra/: bring them up and down, and submit launches to them.

    make cluster-up cluster=aws-spot       # `ray up infra/aws-spot.yaml`
    make cluster-up cluster=kuberay        # kubectl apply infra/kuberay/raycluster.yaml
    make cluster-up cluster=local-fake     # Ray's fake multi-node provider on this machine
    make launch job=vicuna cluster=local-fake
    make logs id=<submission id> cluster=local-fake / make stop id=...
    make cluster-status / cluster-down cluster=...

A launch on a named cluster goes through the Ray Jobs API: the project folder is the job's
working_dir, the entrypoint is `python -m orchestrator launch ...` on the head, and the logs
stream back here. Inside, the launcher sees RAY_ADDRESS and ORCHESTRATOR_CLUSTER, asks the
autoscaler for the job's workers (request_resources), waits for them (falling back from spot to
on-demand when configured), and releases the request when the job ends (see `autoscale.py`).

Up, down, status, a submitted job's environment and preflight are each cluster backend's
(backends.py); what `up` learned about a cluster (its dashboard and GCS addresses) is kept in
`.clusters/<name>.json` (cluster_state.py), so later commands need only the name.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.launch import backends
from orchestrator.launch.backends import (  # noqa: F401 - re-exported: the cluster front door
    SUBMITTED_ENV,
    check_submission,
    job_env,
    kill_processes,
)
from orchestrator.launch.cluster_state import (  # noqa: F401 - re-exported
    INFRA,
    auth_headers,
    cluster_config,
    ensure_auth_token,
    state,
    state_dir,
)
from orchestrator.launch.shipping import (  # noqa: F401 - re-exported
    HEAVY,
    SECRET_PATTERNS,
    SHIPPED,
    working_dir_excludes,
)
from orchestrator.paths import REPO_ROOT

# Never shipped to the cluster with the job (the image or the node has the environment).
# What a Jobs API submission never uploads (Ray stores the package in the cluster's GCS, where
# anyone with dashboard access can fetch it): environments, outputs, databases and caches, and
# anything that looks like a credential.
WORKING_DIR_EXCLUDES = working_dir_excludes()


def is_fake(name: str) -> bool:
    return backends.backend(name).kind == "fake"


# ---------------------------------------------------------------------- up / down / status
def up(name: str, wait_s: float | None = None) -> dict[str, Any]:
    """Bring cluster `name` up (its backend: the fake provider here, `ray up`, KubeRay)."""
    b = backends.backend(name)
    return b.up() if wait_s is None else b.up(wait_s)


def down(name: str) -> None:
    """Stop the cluster: every node and process it started."""
    backends.backend(name).down()


def status(name: str) -> str:
    return backends.backend(name).status()


def diagnose(name: str) -> str:
    """What to read when a cluster does not do what was asked: its status and, on a fake
    cluster, the autoscaler monitor's log tail."""
    return "\n".join(backends.backend(name).diagnose())


def nodes(name: str) -> list[dict[str, Any]]:
    """Every node the cluster's GCS knows (alive and dead), from the dashboard's state API."""
    import urllib.request

    url = f"{state(name)['dashboard_url']}/api/v0/nodes?detail=1&limit=1000"
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=auth_headers()), timeout=10
    ) as r:
        return json.loads(r.read())["data"]["result"]["result"]


def market_nodes(name: str, market: str, alive: bool = True) -> list[dict[str, Any]]:
    """The cluster's worker nodes of one market (by their `market` label)."""
    return [
        n for n in nodes(name)
        if (n.get("labels") or {}).get("market") == market and (n["state"] == "ALIVE") == alive
        and not n.get("is_head_node")
    ]  # fmt: skip


def capacity_fault(
    name: str, node_type: str, for_s: float | None = None, fail_fraction: float | None = None
) -> dict[str, Any]:
    """A fake cluster's capacity fault (launch/fake_capacity.py): `node_type` has no capacity
    for the next `for_s` seconds and/or fails `fail_fraction` of its launches; neither: the
    fault is cleared. Returns every fault in force."""
    from orchestrator.launch.backends import FAULTS_FILE
    from orchestrator.launch.fake_capacity import write_fault

    until = None if for_s is None else time.time() + for_s
    path = Path(state(name)["temp_dir"]) / FAULTS_FILE
    return write_fault(path, node_type, no_capacity_until=until, fail_fraction=fail_fraction)


def preempt_fake_node(node_id: str) -> int:
    """What a spot preemption does to a fake node: SIGKILL its raylet and every process it
    started (all carry its id, in their command line or RAY_OVERRIDE_NODE_ID_FOR_TESTING).
    Returns how many processes were killed."""
    import psutil

    killed = 0
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
            if node_id in cmd or env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id:
                p.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


# ---------------------------------------------------------------------- jobs
def client(name: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(state(name)["dashboard_url"], headers=auth_headers())


def entrypoint(
    job: str,
    scale: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    stage: str | None = None,
    yes: bool = False,
    fresh: str | None = None,
) -> list[str]:
    """Pure: the launch command the cluster runs, carrying the user's words and no others
    (`--stage` and `--yes` only when given: the budget question was asked on this side)."""
    args = ["python", "-m", "orchestrator", "launch", job]
    if scale:
        args += ["--scale", scale]
    if overrides:
        args += ["--set", " ".join(overrides)]
    if run_name:
        args += ["--run", run_name]
    if stage:
        args += ["--stage", stage]
    if fresh:
        args += ["--fresh", fresh]
    if yes:
        args.append("--yes")
    return args


def submit(
    name: str,
    job: str,
    scale: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    follow: bool = True,
    stage: str | None = None,
    yes: bool = False,
    fresh: str | None = None,
) -> tuple[str, str]:
    """Submit `orchestrator launch` to the named cluster. Returns (submission id, final status
    or "SUBMITTED" when not following). The caller has made the budget decision
    (`checks.remote_consent`); `yes` carries it."""
    args = entrypoint(job, scale, overrides, run_name, stage, yes, fresh)
    env = job_env(name)
    c = client(name)
    deadline = time.time() + 90
    while True:  # a head that just came up may not have its job agent yet
        try:
            sid = c.submit_job(
                entrypoint=shlex.join(args),
                runtime_env={
                    "working_dir": str(REPO_ROOT),
                    "excludes": working_dir_excludes(),
                    "env_vars": env,
                },
            )
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(1.0)
    print(f"submitted {sid} to {name} ({state(name)['dashboard_url']}): {shlex.join(args)}")
    print(f"  logs: make logs cluster={name} id={sid}    stop: make stop cluster={name} id={sid}")
    if not follow:
        return sid, "SUBMITTED"
    return sid, follow_logs(name, sid)


def follow_logs(name: str, sid: str) -> str:
    """Stream a submission's logs until it ends; returns its final status."""
    import asyncio

    c = client(name)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(sid):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    return str(c.get_job_status(sid))


def logs(name: str, sid: str) -> str:
    return client(name).get_job_logs(sid)


def stop(name: str, sid: str) -> bool:
    return client(name).stop_job(sid)

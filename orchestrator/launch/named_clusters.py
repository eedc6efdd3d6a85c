"""Named clusters from infra/: bring them up and down, and submit launches to them.

    make cluster-up cluster=aws-spot       # `ray up infra/aws-spot.yaml`
    make cluster-up cluster=local-fake     # Ray's fake multi-node provider on this machine
    make launch job=vicuna cluster=local-fake
    make logs id=<submission id> cluster=local-fake / make stop id=...
    make cluster-status / cluster-down cluster=...

A launch on a named cluster goes through the Ray Jobs API: the project folder is the job's
working_dir, the entrypoint is `python -m orchestrator launch ...` on the head, and the logs
stream back here. Inside, the launcher sees RAY_ADDRESS and ORCHESTRATOR_CLUSTER, asks the
autoscaler for the job's workers (request_resources), waits for them (falling back from spot to
on-demand when configured), and releases the request when the job ends (see `autoscale.py`).

What `up` learned about a cluster (its dashboard and GCS addresses) is kept in
`.clusters/<name>.json`, so later commands need only the name.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.names import is_safe_name
from orchestrator.config.schema import ConfigError
from orchestrator.paths import REPO_ROOT
from orchestrator.urls import is_object_store

INFRA = REPO_ROOT / "infra"


def state_dir() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_CLUSTERS_DIR", REPO_ROOT / ".clusters"))


# Never shipped to the cluster with the job (the image or the node has the environment).
# What a Jobs API submission never uploads (Ray stores the package in the cluster's GCS, where
# anyone with dashboard access can fetch it): environments, outputs, databases and caches, and
# anything that looks like a credential.
from orchestrator.launch.shipping import (  # noqa: E402, F401 - re-exported
    HEAVY,
    SECRET_PATTERNS,
    SHIPPED,
    working_dir_excludes,
)

WORKING_DIR_EXCLUDES = working_dir_excludes()


def auth_headers() -> dict[str, str]:
    """Ray 2.60 turns token auth on by default: the dashboard (Jobs API, state API) wants
    `Authorization: Bearer <token>`, the token being RAY_AUTH_TOKEN or ~/.ray/auth_token (for a
    remote cluster, put that cluster's token there). Sent explicitly: Ray caches its own auth
    mode at first use in a process."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    token_file = Path.home() / ".ray" / "auth_token"
    if not token and token_file.exists():
        token = token_file.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _cli_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if auth_headers():
        env.setdefault("RAY_AUTH_MODE", "token")
    return env


def cluster_config(name: str) -> Path:
    known = sorted(p.stem for p in INFRA.glob("*.yaml"))
    if not is_safe_name(name):
        raise ConfigError(f"cluster={str(name)[:80]!r} is not a cluster name; known: {known}")
    path = INFRA / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no cluster named {name!r}: {path} does not exist; known: {known}")
    return path


def is_fake(name: str) -> bool:
    cfg = yaml.safe_load(cluster_config(name).read_text())
    return cfg.get("provider", {}).get("type") == "fake_multinode"


def state(name: str) -> dict[str, Any]:
    path = state_dir() / f"{name}.json"
    if not path.exists():
        raise ConfigError(
            f"cluster {name!r} is not up (no {path}); run make cluster-up cluster={name}"
        )
    return json.loads(path.read_text())


def _save_state(name: str, data: dict[str, Any]) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    (state_dir() / f"{name}.json").write_text(json.dumps(data, indent=1))


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


# ---------------------------------------------------------------------- up / down / status
def up(name: str, wait_s: float = 60.0) -> dict[str, Any]:
    """Start the cluster's head (fake provider: here; aws: `ray up`). Returns its state."""
    if is_fake(name):
        return _up_fake(name, wait_s)
    # The cluster's token (RAY_AUTH_MODE=token on every node): this machine's ~/.ray/auth_token,
    # created if missing and copied to the nodes by the cluster file's file_mounts.
    ensure_auth_token()
    cmd = [_ray_bin(), "up", "-y", "--no-config-cache", str(cluster_config(name))]
    print("$ " + shlex.join(cmd))
    subprocess.run(cmd, check=True)
    head_ip = subprocess.run(
        [_ray_bin(), "get-head-ip", str(cluster_config(name))],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    data = {
        "name": name,
        "kind": "ray-up",
        "gcs_address": f"{head_ip}:6379",
        # The dashboard is not public: `ray dashboard infra/<name>.yaml` forwards it here.
        "dashboard_url": "http://127.0.0.1:8265",
    }
    _save_state(name, data)
    print(f"cluster {name} is up (head {head_ip}); run `ray dashboard {cluster_config(name)}` "
          "in another terminal to reach its Jobs API at http://127.0.0.1:8265")  # fmt: skip
    return data


def _up_fake(name: str, wait_s: float) -> dict[str, Any]:
    from orchestrator.launch.ray_session import free_port

    try:
        current = state(name)
        if _dashboard_alive(current["dashboard_url"]):
            print(f"cluster {name} is already up: {current['dashboard_url']}")
            return current
    except ConfigError:
        pass
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayfake-", dir="/tmp")
    cfg = yaml.safe_load(cluster_config(name).read_text())
    cfg["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    filled = Path(temp_dir) / "autoscaling.yaml"
    filled.write_text(yaml.safe_dump(cfg))
    head = cfg["available_node_types"][cfg["head_node_type"]]
    # Token auth, explicitly (Ray 2.60 defaults to it for clusters on this machine; 2.61 for
    # all): the dashboard and Jobs API refuse requests without ~/.ray/auth_token.
    ensure_auth_token()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_FAKE_CLUSTER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # No Prometheus exporter: Ray binds it to every interface, unauthenticated, unless the
        # node's IP is a loopback one (the fake nodes have made-up IPs). Nothing here reads it.
        "RAY_enable_metrics_collection": "0",
        # Every node of this cluster is on this machine: Ray then takes 127.0.0.1 as the node
        # IP of the head and of the nodes the fake autoscaler adds (with RAY_FAKE_CLUSTER it
        # ignores --node-ip-address), and binds its autoscaler and dashboard Prometheus
        # servers (ports 44217, 44227) to loopback instead of every interface.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # The job driver on the head runs `python`: this environment's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        # A loopback node IP: Ray then binds its unauthenticated Prometheus exporters (the
        # dashboard's, the autoscaler's, the agent's) to 127.0.0.1 instead of every interface.
        _ray_bin(), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-port={dash}", f"--autoscaling-config={filled}", f"--temp-dir={temp_dir}",
        # Every port chosen free: other Ray instances on this host keep their defaults.
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--num-cpus={head['resources'].get('CPU', 1)}", "--num-gpus=0",
        "--labels=instance_type=local-2vcpu,market=on_demand",
    ]  # fmt: skip
    print("$ RAY_FAKE_CLUSTER=1 " + shlex.join(cmd))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    data = {
        "name": name,
        "kind": "fake",
        "gcs_address": f"127.0.0.1:{port}",
        "dashboard_url": f"http://127.0.0.1:{dash}",
        "temp_dir": temp_dir,
    }
    _save_state(name, data)
    deadline = time.time() + wait_s
    while not _dashboard_alive(data["dashboard_url"]):
        if time.time() > deadline:
            raise RuntimeError(
                f"cluster {name}: no dashboard at {data['dashboard_url']} after {wait_s} s"
            )
        time.sleep(0.5)
    print(f"cluster {name} is up: GCS {data['gcs_address']}, Jobs API {data['dashboard_url']}")
    return data


def ensure_auth_token() -> Path:
    """This machine's Ray token (~/.ray/auth_token), created if missing, readable by its owner
    only (Ray writes it 0644: anyone on the machine could then drive the cluster)."""
    token = Path.home() / ".ray" / "auth_token"
    subprocess.run([_ray_bin(), "get-auth-token", "--generate"], check=True, capture_output=True)
    token.chmod(0o600)
    token.parent.chmod(0o700)
    return token


def _dashboard_alive(url: str) -> bool:
    import urllib.request

    try:
        req = urllib.request.Request(f"{url}/api/version", headers=auth_headers())
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up (yet)
        return False


def down(name: str) -> None:
    """Stop the cluster: every node and process it started (aws: `ray down`)."""
    if not is_fake(name):
        subprocess.run([_ray_bin(), "down", "-y", str(cluster_config(name))], check=True)
        (state_dir() / f"{name}.json").unlink(missing_ok=True)
        return
    try:
        data = state(name)
    except ConfigError:
        print(f"cluster {name} is not up")
        return
    killed = kill_processes(data["temp_dir"])
    (state_dir() / f"{name}.json").unlink(missing_ok=True)
    print(f"cluster {name} is down ({killed} processes stopped)")


def kill_processes(marker: str, sig: int = 9) -> int:
    """SIGKILL (by default) every process of a fake cluster: whose command line or open files
    mention `marker` (its temp dir). Ray renames agents and workers (`ray::...`), so the open
    log files are what gives most of them away."""
    import psutil

    n = 0
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            mine = marker in " ".join(p.info["cmdline"] or []) or any(
                marker in f.path for f in p.open_files()
            )
            if mine:
                p.send_signal(sig)
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return n


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


def status(name: str) -> str:
    data = state(name)
    out = subprocess.run(
        [_ray_bin(), "status", f"--address={data['gcs_address']}"],
        capture_output=True, text=True, env=_cli_env(),
    )  # fmt: skip
    return out.stdout + out.stderr


def diagnose(name: str, tail_lines: int = 60) -> str:
    """What to read when a cluster does not do what was asked: `ray status` (nodes, pending
    demands, resource requests) and, on a fake cluster, the autoscaler monitor's log tail."""
    parts = [f"--- ray status ({name})", status(name)]
    if is_fake(name):
        logs = Path(state(name)["temp_dir"]) / "session_latest" / "logs"
        for log in ("monitor.log", "monitor.err"):
            path = logs / log
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail_lines:]
                parts += [f"--- {path} (last {len(lines)} lines)", *lines]
    return "\n".join(parts)


# ---------------------------------------------------------------------- jobs
def client(name: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(state(name)["dashboard_url"], headers=auth_headers())


# What the launcher on the head needs from here; nodes get their own credentials (instance
# profile, IRSA), and the project's storage and tracking settings.
SUBMITTED_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "ORCHESTRATOR_STORAGE_ROOT",
    "ORCHESTRATOR_STORAGE_SHARED",
)


def job_env(name: str) -> dict[str, str]:
    """The environment of a launch submitted to cluster `name`. A fake cluster runs on this
    machine, so its nodes do share one disk: it declares the project's runs/ folder (or
    $ORCHESTRATOR_STORAGE_ROOT) as its shared root, and the sqlite MLflow store next to it, so
    runs and their MLflow records stay where the user launched from (not in the job's unpacked
    working_dir, which Ray deletes with the session)."""
    from orchestrator.launch.worker_env import OPT_IN, forwarded_secrets

    env = {"ORCHESTRATOR_CLUSTER": name, "PYTHONUNBUFFERED": "1"}
    env.update({k: os.environ[k] for k in SUBMITTED_ENV if os.environ.get(k)})
    # Static secrets only by name (ORCHESTRATOR_FORWARD_SECRETS): a runtime environment is
    # stored in the cluster's GCS and shown on its dashboard.
    secrets = [k for k in forwarded_secrets(os.environ) if os.environ.get(k)]
    if secrets:
        env[OPT_IN] = ",".join(secrets)
        env.update({k: os.environ[k] for k in secrets})
    if is_fake(name):
        root = env.get("ORCHESTRATOR_STORAGE_ROOT", "runs")
        if not is_object_store(root):
            env["ORCHESTRATOR_STORAGE_ROOT"] = str(Path(root).resolve())
            env["ORCHESTRATOR_STORAGE_SHARED"] = "1"
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    return env


def check_submission(name: str, cfg, run_name: str | None) -> None:
    """What the launcher on the cluster would refuse, refused here before anything is sent:
    storage and tracking every node can reach (see orchestrator/storage/resolve.py)."""
    from orchestrator.storage import resolve as storage_resolve

    env = {**os.environ, **job_env(name)}
    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    storage = storage_resolve.resolve(cfg, run_name or "new", env)
    storage_resolve.check_cluster(cfg, storage, uri, env)


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

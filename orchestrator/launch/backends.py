"""Cluster backends: one interface for every kind of cluster infra/ defines.

    make cluster-up cluster=local-fake    # FakeBackend: Ray's fake multi-node provider, here
    make cluster-up cluster=aws-spot      # RayUpBackend: `ray up infra/aws-spot.yaml`
    make cluster-up cluster=kuberay       # KubeRayBackend: `kubectl apply` infra/kuberay/...

Each backend does five things: `up`, `down`, `status`, the environment of a job submitted to it
(`job_env`), and its own preflight checks (`preflight`); `make preflight` adds the checks every
cluster gets (storage and tracking the nodes can reach, the store's read/write, the tracking
server). Which backend a name gets is decided by its definition alone (`backend(name)`):
a `fake_multinode` provider, any other Ray cluster-launcher provider, or a KubeRay manifest.
Jobs are submitted the same way to all three (the Ray Jobs API at the state's dashboard_url:
named_clusters.submit).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import yaml

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.launch import cluster_state as cs
from orchestrator.launch import preflight as pf
from orchestrator.urls import is_object_store


class Backend:
    """A named cluster. Subclasses implement up/down/status and may add job env and checks."""

    kind: ClassVar[str]

    def __init__(self, name: str, path: Path, spec: dict[str, Any]):
        self.name, self.path, self.spec = name, path, spec

    def up(self, wait_s: float = 60.0) -> dict[str, Any]:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def job_env(self, env: dict[str, str]) -> dict[str, str]:
        """The environment of a submitted launch, given what named_clusters.job_env chose."""
        return env

    def preflight(self, cfg: JobConfig, env: dict[str, str]) -> list[pf.Check]:
        """This kind of cluster's own checks (the ones every cluster gets are added by
        run_checks)."""
        return pf.not_applicable(self.kind)

    def diagnose(self) -> list[str]:
        """Lines worth reading when the cluster does not do what was asked."""
        return [f"--- status ({self.name})", self.status()]


# ---------------------------------------------------------------------- the fake cluster
FAULTS_FILE = "capacity_faults.json"


def is_fake(provider: dict[str, Any]) -> bool:
    """Ray's fake multi-node provider, or ours with capacity faults (launch/fake_capacity.py)."""
    return provider.get("type") == "fake_multinode" or str(provider.get("module", "")).endswith(
        "fake_capacity.FakeCapacityProvider"
    )


class FakeBackend(Backend):
    """Ray's fake multi-node provider: every node a process group on this machine."""

    kind = "fake"

    def up(self, wait_s: float = 60.0) -> dict[str, Any]:
        from orchestrator.launch.ray_session import free_port

        try:
            current = cs.state(self.name)
            if cs.dashboard_alive(current["dashboard_url"]):
                print(f"cluster {self.name} is already up: {current['dashboard_url']}")
                return current
        except ConfigError:
            pass
        port, dash = free_port(), free_port()
        temp_dir = tempfile.mkdtemp(prefix="rayfake-", dir="/tmp")
        cfg = dict(self.spec)
        cfg["provider"] = {**cfg["provider"], "gcs_address": f"127.0.0.1:{port}",
                           "capacity_faults_file": str(Path(temp_dir) / FAULTS_FILE),
                           "node_temp_root": temp_dir}  # fmt: skip
        filled = Path(temp_dir) / "autoscaling.yaml"
        filled.write_text(yaml.safe_dump(cfg))
        head = cfg["available_node_types"][cfg["head_node_type"]]
        # Token auth, explicitly (Ray 2.60 defaults to it for clusters on this machine; 2.61 for
        # all): the dashboard and Jobs API refuse requests without ~/.ray/auth_token.
        cs.ensure_auth_token()
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_FAKE_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # No Prometheus exporter: Ray binds it to every interface, unauthenticated, unless
            # the node's IP is a loopback one (the fake nodes have made-up IPs).
            "RAY_enable_metrics_collection": "0",
            # Every node of this cluster is on this machine: Ray then takes 127.0.0.1 as the
            # node IP of the head and of the nodes the fake autoscaler adds, and binds its
            # autoscaler and dashboard Prometheus servers to loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # The job driver on the head runs `python`: this environment's.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        env.pop("RAY_ADDRESS", None)
        cmd = [
            # A loopback node IP: Ray then binds its unauthenticated Prometheus exporters to
            # 127.0.0.1 instead of every interface.
            cs.ray_bin(), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
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
            "name": self.name,
            "kind": self.kind,
            "gcs_address": f"127.0.0.1:{port}",
            "dashboard_url": f"http://127.0.0.1:{dash}",
            "temp_dir": temp_dir,
        }
        cs.save_state(self.name, data)
        _wait_for_dashboard(self.name, data["dashboard_url"], wait_s)
        print(f"cluster {self.name} is up: GCS {data['gcs_address']}, "
              f"Jobs API {data['dashboard_url']}")  # fmt: skip
        return data

    def down(self) -> None:
        try:
            data = cs.state(self.name)
        except ConfigError:
            print(f"cluster {self.name} is not up")
            return
        killed = kill_processes(data["temp_dir"])
        cs.forget(self.name)
        print(f"cluster {self.name} is down ({killed} processes stopped)")

    def status(self) -> str:
        return _ray_status(self.name)

    def job_env(self, env: dict[str, str]) -> dict[str, str]:
        """Every node is on this machine, so the nodes do share one disk: the project's runs/
        folder (or $ORCHESTRATOR_STORAGE_ROOT) is the shared root, and the sqlite MLflow store
        sits next to it, so runs and their records stay where the user launched from (not in
        the job's unpacked working_dir, which Ray deletes with the session)."""
        root = env.get("ORCHESTRATOR_STORAGE_ROOT", "runs")
        if not is_object_store(root):
            env["ORCHESTRATOR_STORAGE_ROOT"] = str(Path(root).resolve())
            env["ORCHESTRATOR_STORAGE_SHARED"] = "1"
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
        return env

    def diagnose(self, tail_lines: int = 60) -> list[str]:
        parts = super().diagnose()
        logs = Path(cs.state(self.name)["temp_dir"]) / "session_latest" / "logs"
        for log in ("monitor.log", "monitor.err"):
            path = logs / log
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail_lines:]
                parts += [f"--- {path} (last {len(lines)} lines)", *lines]
        return parts


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


# ---------------------------------------------------------------------- Ray's cluster launcher
class RayUpBackend(Backend):
    """A cloud cluster by Ray's cluster launcher (`ray up`), AWS in infra/aws-spot.yaml."""

    kind = "ray-up"

    @property
    def provider(self) -> dict[str, Any]:
        return dict(self.spec.get("provider") or {})

    def up(self, wait_s: float = 60.0) -> dict[str, Any]:
        # The cluster's token (RAY_AUTH_MODE=token on every node): this machine's
        # ~/.ray/auth_token, created if missing and copied to the nodes by the file_mounts.
        cs.ensure_auth_token()
        cmd = [cs.ray_bin(), "up", "-y", "--no-config-cache", str(self.path)]
        print("$ " + shlex.join(cmd))
        subprocess.run(cmd, check=True)
        head_ip = subprocess.run(
            [cs.ray_bin(), "get-head-ip", str(self.path)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        data = {
            "name": self.name,
            "kind": self.kind,
            "gcs_address": f"{head_ip}:6379",
            # The dashboard is not public: `ray dashboard infra/<name>.yaml` forwards it here.
            "dashboard_url": "http://127.0.0.1:8265",
        }
        cs.save_state(self.name, data)
        print(f"cluster {self.name} is up (head {head_ip}); run `ray dashboard {self.path}` "
              "in another terminal to reach its Jobs API at http://127.0.0.1:8265")  # fmt: skip
        return data

    def down(self) -> None:
        subprocess.run([cs.ray_bin(), "down", "-y", str(self.path)], check=True)
        cs.forget(self.name)

    def status(self) -> str:
        return _ray_status(self.name)

    def preflight(self, cfg: JobConfig, env: dict[str, str]) -> list[pf.Check]:
        if self.provider.get("type") != "aws":
            return pf.not_applicable(str(self.provider.get("type", "none")))
        from orchestrator.launch.failover import alternatives

        region = self.provider.get("region")
        types = self.spec.get("available_node_types", {})
        # the job's own node types, then those of each alternative it may fail over to
        configs = [cfg, *(a.cfg for a in alternatives(cfg) if a.cfg is not None)]
        checks, launches = [], []
        for c in configs:
            found, launched = pf.node_type_checks(types, c)
            checks += found
            launches.append((c, launched))
        ident = pf.aws_identity(region)
        checks.append(ident)
        for c, launched in launches:
            if ident.ok and launched:
                checks += pf.quota_checks(c, region, launched)
        image = (self.spec.get("docker") or {}).get("image", "")
        return checks + pf.image_checks(image, f"infra/{self.path.name}", region, cfg)


def _ray_status(name: str) -> str:
    data = cs.state(name)
    out = subprocess.run(
        [cs.ray_bin(), "status", f"--address={data['gcs_address']}"],
        capture_output=True, text=True, env=cs.cli_env(),
    )  # fmt: skip
    return out.stdout + out.stderr


def _wait_for_dashboard(name: str, url: str, wait_s: float) -> None:
    deadline = time.time() + wait_s
    while not cs.dashboard_alive(url):
        if time.time() > deadline:
            raise RuntimeError(f"cluster {name}: no dashboard at {url} after {wait_s} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------- KubeRay
class KubeRayBackend(Backend):
    """A RayCluster on Kubernetes (infra/<name>/raycluster.yaml), by kubectl and the KubeRay
    operator. `up` puts this machine's Ray token in the Secret the manifest's
    `authOptions.secretName` names, applies the manifest, waits for `.status.state` ready and
    forwards the head's dashboard (8265) to a free local port; `down` stops the forward and
    deletes what `up` applied."""

    kind = "kuberay"

    @property
    def docs(self) -> list[dict[str, Any]]:
        return self.spec["documents"]

    @property
    def raycluster(self) -> dict[str, Any]:
        (doc,) = [d for d in self.docs if d.get("kind") == "RayCluster"]
        return doc

    @property
    def cluster_name(self) -> str:
        return str(self.raycluster["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.raycluster["metadata"].get("namespace", "default"))

    @property
    def token_secret(self) -> str:
        auth = self.raycluster["spec"].get("authOptions") or {}
        if auth.get("mode") != "token" or not auth.get("secretName"):
            raise ConfigError(
                f"{self.path}: spec.authOptions must be {{mode: token, secretName: <name>}} "
                "(the Secret up fills with this machine's Ray token, so the Jobs API accepts it)"
            )
        return str(auth["secretName"])

    def kubectl(self, *args: str) -> list[str]:
        """Pure: a kubectl command in the cluster's namespace."""
        return ["kubectl", "--namespace", self.namespace, *args]

    def commands(self, local_port: int, wait_s: float) -> dict[str, list[str]]:
        """Pure: what up and down run, in order (the token Secret is built from the token file,
        never from its text on a command line)."""
        token = str(Path.home() / ".ray" / "auth_token")
        return {
            "secret": self.kubectl(
                "create",
                "secret",
                "generic",
                self.token_secret,
                f"--from-file=auth_token={token}",
                "--dry-run=client",
                "--output=yaml",
            ),  # fmt: skip
            "apply": self.kubectl("apply", "--filename", "-"),
            "manifest": self.kubectl("apply", "--filename", str(self.path)),
            "wait": self.kubectl(
                "wait",
                f"raycluster/{self.cluster_name}",
                "--for=jsonpath={.status.state}=ready",
                f"--timeout={int(wait_s)}s",
            ),  # fmt: skip
            "forward": self.kubectl(
                "port-forward", f"svc/{self.cluster_name}-head-svc", f"{local_port}:8265"
            ),  # fmt: skip
            "delete": self.kubectl("delete", "--ignore-not-found", "--filename", str(self.path)),
            "delete_secret": self.kubectl(
                "delete", "secret", "--ignore-not-found", self.token_secret
            ),  # fmt: skip
        }

    def _require_kubectl(self) -> None:
        if shutil.which("kubectl") is None:
            raise ConfigError(
                f"cluster {self.name!r} is a KubeRay RayCluster ({self.path}): it needs kubectl "
                "(>= 1.23) on PATH, configured for a Kubernetes cluster with the KubeRay "
                "operator installed (docs/clusters.md#kuberay)"
            )

    def up(self, wait_s: float = 600.0) -> dict[str, Any]:
        from orchestrator.launch.ray_session import free_port

        self._require_kubectl()
        cs.ensure_auth_token()
        port = free_port()
        cmd = self.commands(port, wait_s)
        secret = subprocess.run(cmd["secret"], check=True, capture_output=True).stdout
        subprocess.run(cmd["apply"], input=secret, check=True, stdout=subprocess.DEVNULL)
        for step in ("manifest", "wait"):
            print("$ " + shlex.join(cmd[step]))
            subprocess.run(cmd[step], check=True)
        print("$ " + shlex.join(cmd["forward"]) + " &")
        forward = subprocess.Popen(cmd["forward"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        data = {
            "name": self.name,
            "kind": self.kind,
            "dashboard_url": f"http://127.0.0.1:{port}",
            "port_forward_pid": forward.pid,
        }
        cs.save_state(self.name, data)
        _wait_for_dashboard(self.name, data["dashboard_url"], 60.0)
        print(f"cluster {self.name} is up: RayCluster {self.namespace}/{self.cluster_name}, "
              f"Jobs API {data['dashboard_url']} (kubectl port-forward, pid {forward.pid})")  # fmt: skip
        return data

    def down(self) -> None:
        self._require_kubectl()
        try:
            pid = int(cs.state(self.name).get("port_forward_pid") or 0)
        except ConfigError:
            pid = 0
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        cmd = self.commands(0, 0)
        for step in ("delete", "delete_secret"):
            print("$ " + shlex.join(cmd[step]))
            subprocess.run(cmd[step], check=True)
        cs.forget(self.name)
        print(f"cluster {self.name} is down (RayCluster {self.cluster_name} deleted)")

    def status(self) -> str:
        self._require_kubectl()
        parts = []
        for args in (("get", f"raycluster/{self.cluster_name}", "--output=wide"),
                     ("get", "pods", f"--selector=ray.io/cluster={self.cluster_name}",
                      "--output=wide")):  # fmt: skip
            out = subprocess.run(self.kubectl(*args), capture_output=True, text=True)
            parts.append(out.stdout + out.stderr)
        return "\n".join(parts)

    def preflight(self, cfg: JobConfig, env: dict[str, str]) -> list[pf.Check]:
        """kubectl, the KubeRay operator's CRD, the right to create RayClusters, the Secret name,
        and the image (on ECR: that it exists and holds what the job needs). EC2 quotas and
        node types are the Kubernetes cluster's (Karpenter's or the node groups'): n/a."""
        checks = [self._tool_check()]
        if checks[0].ok:
            checks.append(self._kubectl_check(
                "KubeRay operator (CRD rayclusters.ray.io)",
                ("get", "crd", "rayclusters.ray.io"),
                "install the KubeRay operator (helm install kuberay-operator kuberay/kuberay-operator)"))  # fmt: skip
            checks.append(self._kubectl_check(
                f"may create RayClusters in namespace {self.namespace}",
                ("auth", "can-i", "create", "rayclusters.ray.io"),
                "ask the cluster admin for a Role that allows create on rayclusters.ray.io"))  # fmt: skip
        try:
            checks.append(pf.Check("Ray token Secret", True, self.token_secret))
        except ConfigError as e:
            checks.append(pf.Check("Ray token Secret", False, str(e), "see infra/kuberay/"))
        where = str(self.path.relative_to(cs.INFRA.parent))
        for image in sorted({c["image"] for c in _containers(self.raycluster)}):
            checks += pf.image_checks(image, where, None, cfg)  # the region is the image's
        return checks + [
            pf.Check(n, True, "not run: node types and quotas are the Kubernetes cluster's",
                     applies=False)
            for n in pf.AWS_ONLY if n != "container image"
        ]  # fmt: skip

    def _tool_check(self) -> pf.Check:
        try:
            self._require_kubectl()
            return pf.Check("kubectl", True, str(shutil.which("kubectl")))
        except ConfigError as e:
            return pf.Check("kubectl", False, str(e), "install kubectl and point it at the cluster")

    def _kubectl_check(self, name: str, args: tuple[str, ...], fix: str) -> pf.Check:
        out = subprocess.run(self.kubectl(*args), capture_output=True, text=True, timeout=60)
        detail = (out.stdout or out.stderr).strip().splitlines()
        return pf.Check(name, out.returncode == 0, (detail or ["no output"])[-1][:300], fix)


def _containers(raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = raycluster["spec"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---------------------------------------------------------------------- which backend
BACKENDS: dict[str, type[Backend]] = {
    b.kind: b for b in (FakeBackend, RayUpBackend, KubeRayBackend)
}


def backend(name: str) -> Backend:
    """The backend of cluster `name`, from its definition in infra/."""
    path = cs.cluster_config(name)
    if path.name == cs.KUBERAY_MANIFEST:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if sum(d.get("kind") == "RayCluster" for d in docs) != 1:
            raise ConfigError(f"{path}: a KubeRay cluster file holds exactly one RayCluster")
        return KubeRayBackend(name, path, {"documents": docs})
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec.get("provider"), dict) or "type" not in spec["provider"]:
        raise ConfigError(f"{path}: provider.type is missing (a Ray cluster launcher file)")
    kind = "fake" if is_fake(spec["provider"]) else "ray-up"
    return BACKENDS[kind](name, path, spec)


# ---------------------------------------------------------------------- submissions, preflight
# What the launcher on the head needs from here; nodes get their own credentials (instance
# profile, IRSA), and the project's storage and tracking settings.
SUBMITTED_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "ORCHESTRATOR_STORAGE_ROOT",
    "ORCHESTRATOR_STORAGE_SHARED",
    "ORCHESTRATOR_REQUEST_EXPIRE_S",
)


def job_env(name: str) -> dict[str, str]:
    """The environment of a launch submitted to cluster `name`: the settings above, the secrets
    the user opted in by name, then what the cluster's backend adds."""
    from orchestrator.launch.worker_env import OPT_IN, forwarded_secrets

    env = {"ORCHESTRATOR_CLUSTER": name, "PYTHONUNBUFFERED": "1"}
    env.update({k: os.environ[k] for k in SUBMITTED_ENV if os.environ.get(k)})
    spec = getattr(backend(name), "spec", None)
    types = cs.node_type_shapes(spec)
    if types:  # infra/ is not uploaded: the launcher's zones and node shapes come this way
        env[cs.NODE_TYPES_ENV] = json.dumps(types, sort_keys=True)
    idle = cs.idle_timeout_of(spec)
    if idle is not None:  # how long the nodes outlive the launch: billed to the run
        env[cs.IDLE_TIMEOUT_ENV] = f"{idle:g}"
    # Static secrets only by name (ORCHESTRATOR_FORWARD_SECRETS): a runtime environment is
    # stored in the cluster's GCS and shown on its dashboard.
    secrets = [k for k in forwarded_secrets(os.environ) if os.environ.get(k)]
    if secrets:
        env[OPT_IN] = ",".join(secrets)
        env.update({k: os.environ[k] for k in secrets})
    return backend(name).job_env(env)


def check_submission(name: str, cfg: JobConfig, run_name: str | None) -> None:
    """What the launcher on the cluster would refuse, refused here before anything is sent:
    storage and tracking every node can reach (see orchestrator/storage/resolve.py)."""
    from orchestrator.storage import resolve as storage_resolve

    env = {**os.environ, **job_env(name)}
    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    storage = storage_resolve.resolve(cfg, run_name or "new", env)
    storage_resolve.check_cluster(cfg, storage, uri, env)


def run_checks(cluster: str, cfg: JobConfig, env: dict[str, str]) -> list[pf.Check]:
    """Every check of `make preflight`: the ones every cluster gets, then its backend's."""
    name = "storage and tracking reachable from every node"
    try:
        check_submission(cluster, cfg, None)
        checks = [pf.Check(name, True, "yes")]
    except ConfigError as e:
        checks = [pf.Check(name, False, str(e), "see docs/storage.md")]
    checks += pf.store_checks(cfg, env)
    checks.append(pf.tracking_check(env))
    return checks + backend(cluster).preflight(cfg, env)


def preflight_main(cluster: str, job: str, scale: str | None, overrides: list[str]) -> int:
    from orchestrator.compose.load import compose

    cfg = compose(job, scale, overrides)
    checks = run_checks(cluster, cfg, dict(os.environ))
    for c in checks:
        print(c.line())
    print(f"\n{pf.summary(checks)}")
    return 1 if any(c.applies and not c.ok for c in checks) else 0

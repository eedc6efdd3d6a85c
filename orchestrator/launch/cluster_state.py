"""Where named clusters are defined (infra/) and what `up` learned about them (.clusters/), and
the Ray token every cluster asks for. A leaf of launch/: the backends, the preflight and the job
submission read these; this module imports none of them.

A cluster's name is its definition's: `infra/<name>.yaml` (a Ray cluster launcher file: the fake
provider or a cloud's) or `infra/<name>/raycluster.yaml` (a KubeRay RayCluster manifest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.config.names import is_safe_name
from orchestrator.config.schema import ConfigError
from orchestrator.paths import REPO_ROOT

INFRA = REPO_ROOT / "infra"
KUBERAY_MANIFEST = "raycluster.yaml"


def known() -> list[str]:
    """Every cluster name infra/ defines."""
    files = [p.stem for p in INFRA.glob("*.yaml")]
    folders = [p.parent.name for p in INFRA.glob(f"*/{KUBERAY_MANIFEST}")]
    return sorted(files + folders)


def cluster_config(name: str) -> Path:
    """The file that defines cluster `name` (an unknown or unsafe name: a ConfigError naming
    the known ones)."""
    if not is_safe_name(name):
        raise ConfigError(f"cluster={str(name)[:80]!r} is not a cluster name; known: {known()}")
    for path in (INFRA / f"{name}.yaml", INFRA / name / KUBERAY_MANIFEST):
        if path.exists():
            return path
    raise ConfigError(
        f"no cluster named {name!r}: neither infra/{name}.yaml nor infra/{name}/"
        f"{KUBERAY_MANIFEST} exists; known: {known()}"
    )


def state_dir() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_CLUSTERS_DIR", REPO_ROOT / ".clusters"))


def state(name: str) -> dict[str, Any]:
    path = state_dir() / f"{name}.json"
    if not path.exists():
        raise ConfigError(
            f"cluster {name!r} is not up (no {path}); run make cluster-up cluster={name}"
        )
    return json.loads(path.read_text())


def save_state(name: str, data: dict[str, Any]) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    (state_dir() / f"{name}.json").write_text(json.dumps(data, indent=1))


def forget(name: str) -> None:
    (state_dir() / f"{name}.json").unlink(missing_ok=True)


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


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


def cli_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if auth_headers():
        env.setdefault("RAY_AUTH_MODE", "token")
    return env


def ensure_auth_token() -> Path:
    """This machine's Ray token (~/.ray/auth_token), created if missing, readable by its owner
    only (Ray writes it 0644: anyone on the machine could then drive the cluster)."""
    token = Path.home() / ".ray" / "auth_token"
    subprocess.run([ray_bin(), "get-auth-token", "--generate"], check=True, capture_output=True)
    token.chmod(0o600)
    token.parent.chmod(0o700)
    return token


def dashboard_alive(url: str) -> bool:
    import urllib.request

    try:
        req = urllib.request.Request(f"{url}/api/version", headers=auth_headers())
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up (yet)
        return False


NODE_TYPES_ENV = "ORCHESTRATOR_NODE_TYPES"
IDLE_TIMEOUT_ENV = "ORCHESTRATOR_IDLE_TIMEOUT_S"
"""A submitted launch's view of its cluster's node types (infra/ is not uploaded)."""


def idle_timeout_of(spec: Any) -> float | None:
    """Seconds a cluster keeps an idle worker node: a cluster launcher file's
    idle_timeout_minutes (Ray's default 5 minutes when unset), or a KubeRay manifest's
    RayCluster `autoscalerOptions.idleTimeoutSeconds` (KubeRay's default 60 s); None when
    `spec` is neither, or does not autoscale."""
    if not isinstance(spec, dict):
        return None
    if "available_node_types" in spec:
        minutes = spec.get("idle_timeout_minutes", 5)
        return 60.0 * float(minutes) if isinstance(minutes, int | float) else None
    for doc in spec.get("documents") or []:  # KubeRay (launch/backends.py KubeRayBackend)
        if isinstance(doc, dict) and doc.get("kind") == "RayCluster":
            cluster = doc.get("spec") or {}
            if not cluster.get("enableInTreeAutoscaling"):
                return None
            seconds = (cluster.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 60)
            return float(seconds) if isinstance(seconds, int | float) else None
    return None


def node_type_shapes(spec: Any) -> dict[str, dict[str, Any]]:
    """{node type: {resources, labels}} of a cluster launcher file's node types (what the
    launcher on the head needs to choose zones; no node_config, nothing secret)."""
    types = spec.get("available_node_types") if isinstance(spec, dict) else None
    if not isinstance(types, dict):
        return {}
    return {
        name: {"resources": dict(t.get("resources") or {}), "labels": dict(t.get("labels") or {})}
        for name, t in types.items()
        if isinstance(t, dict)
    }

"""Where a run's storage is, and whether it can work where the run is going.

    storage = resolve(cfg, run_name, os.environ)
    check_cluster(cfg, storage, tracking_uri, on_cluster=True)   # before anything contacts it

A Ray cluster's nodes share no disk with the machine that launches (a GPU node has its own
volumes; the head may be replaced). So on a cluster every artifact must go where every node
reaches it: an s3:// prefix, or a folder every node mounts that the user declares as such; and
the MLflow tracking URI must be a server, not a file. What cannot work is refused here, naming
the setting that fixes it, before any cluster is contacted or any money spent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.storage.durable import is_s3
from orchestrator.storage.layout import CHECKPOINTS, RAY_STORAGE, RunStorage
from orchestrator.urls import local_path
from orchestrator.urls import scheme as url_scheme

ROOT_ENV = "ORCHESTRATOR_STORAGE_ROOT"
SHARED_ENV = "ORCHESTRATOR_STORAGE_SHARED"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def root_of(cfg: JobConfig, env: Mapping[str, str]) -> str:
    """storage.root, else $ORCHESTRATOR_STORAGE_ROOT, else ./runs (folders made absolute)."""
    root = cfg.storage.root or env.get(ROOT_ENV) or "runs"
    url_scheme(root, f"storage.root (or ${ROOT_ENV})")
    return root.rstrip("/") if is_s3(root) else str(Path(local_path(root)).expanduser().resolve())


def is_shared(cfg: JobConfig, env: Mapping[str, str]) -> bool:
    return cfg.storage.shared or _truthy(env.get(SHARED_ENV))


def resolve(cfg: JobConfig, run_name: str, env: Mapping[str, str]) -> RunStorage:
    root = root_of(cfg, env)
    d = cfg.checkpoint.dir
    if d is None:
        ckpt = f"{root}/{cfg.job}/{run_name}/{CHECKPOINTS}"
    else:
        ckpt = d.rstrip("/") if is_s3(d) else str(Path(local_path(d)).expanduser().resolve())
    return RunStorage(root, cfg.job, run_name, ckpt, cfg.storage.scratch)


def is_file_tracking(uri: str) -> bool:
    """An MLflow store that is a file on one machine (sqlite, file:, a plain path)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_cluster(
    cfg: JobConfig, storage: RunStorage, tracking_uri: str, env: Mapping[str, str]
) -> None:
    """Refuse storage a multi-node cluster cannot use.

    Raises:
        ConfigError: naming the setting at fault and the fix.
    """
    shared = is_shared(cfg, env)
    if shared:
        return  # the user declared a folder every node mounts (or it is all one machine)
    problems = []
    if not is_s3(storage.root):
        problems.append(
            f"storage.root={storage.root} is a folder on the machine that launches, which the "
            "cluster's other nodes cannot see: set storage.root=s3://bucket/prefix (or "
            f"{ROOT_ENV}), or declare a folder every node mounts with storage.shared=true"
        )
    if cfg.checkpoint.dir is not None and not is_s3(cfg.checkpoint.dir):
        problems.append(
            f"checkpoint.dir={cfg.checkpoint.dir} is a folder on one machine: set "
            "checkpoint.dir=s3://bucket/prefix (or leave it unset: checkpoints then go under "
            "storage.root)"
        )
    if is_file_tracking(tracking_uri):
        problems.append(
            f"the MLflow tracking URI {tracking_uri!r} is a file on one machine: set "
            "MLFLOW_TRACKING_URI=http://host:5000 (a tracking server every node reaches)"
        )
    if cfg.data.format == "text" and not is_s3(cfg.data.source or ""):
        from orchestrator.data.text import expand_source, is_files
        from orchestrator.paths import REPO_ROOT

        src = expand_source(cfg.data.source or "")
        stdlib = "{python_stdlib}" in (cfg.data.source or "")
        if is_files(cfg.data.source or "") and not stdlib and not _under(src, REPO_ROOT):
            problems.append(
                f"data.source={cfg.data.source} is a folder on the machine that launches; the "
                "workers stream it themselves: put the corpus on s3:// (data.source="
                "s3://bucket/prefix/*.jsonl)"
            )
    if problems:
        raise ConfigError(
            "this run goes to a Ray cluster whose nodes share no disk:\n  - "
            + "\n  - ".join(problems)
        )


def _under(path: str, root: Path) -> bool:
    try:
        Path(path.split("*")[0]).resolve().relative_to(root)
        return True
    except ValueError:
        return False


def ray_storage(storage: RunStorage) -> tuple[str, Any]:
    """Ray Train's RunConfig(storage_path, storage_filesystem) in the run's durable folder:
    Ray requires storage every node reaches on a multi-node cluster."""
    url = f"{storage.run_url}/{RAY_STORAGE}"
    if not is_s3(url):
        return url, None
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    }
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return url[len("s3://") :], pyarrow.fs.S3FileSystem(**kwargs)

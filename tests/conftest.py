"""Shared fixtures. Unit tests: no network, no cluster. Integration tests start real local services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE trained on the shipped ShareGPT sample (what local runs use)."""
    from orchestrator.config.schema import DataConfig
    from orchestrator.data.dataset import template_texts
    from orchestrator.data.tokenizer import train_bpe

    cfg = DataConfig(source=str(REPO_ROOT / "data/samples/sharegpt_sample.json"))
    return train_bpe(template_texts(cfg), vocab_size=512)


def requires_gpus(n: int):
    """Skip unless at least `n` CUDA GPUs are present (torchtune's gpu_test)."""
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return pytest.mark.skipif(have < n, reason=f"needs {n} CUDA GPUs, found {have}")


@pytest.fixture(autouse=True)
def _no_ray_leak(request):
    yield
    if "shared_ray" in request.fixturenames:
        return  # a module-wide cluster, shut down by its own fixture
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray cluster for a whole test module: launches reuse it (no start-up per run)."""
    import tempfile

    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level="warning",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def launch_workdir(tmp_path_factory, shared_ray):
    """A working directory for a module's launches (runs/ and an sqlite MLflow store in it),
    on the module's shared Ray cluster; the old directory and MLflow URI come back after."""
    d = tmp_path_factory.mktemp("work")
    old, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    yield d
    if old_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri
    os.chdir(old)


@pytest.fixture(scope="session")
def start_moto():
    """Start a moto_server (a real HTTP AWS endpoint) on a free 127.0.0.1 port: returns
    (url, process). Every server started is killed at the end of the session."""
    from tests.faults import start_moto_server

    procs = []

    def start():
        url, proc = start_moto_server()
        procs.append(proc)
        return url, proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()

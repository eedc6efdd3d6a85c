"""Helpers shared by the benchmarks: a local Ray cluster, an in-process process group, and a
scratch working directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def local_ray() -> None:
    """A 2-CPU local Ray cluster in its own temp dir, shared by a benchmark's launches."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(dir="/tmp"),
        logging_level="warning",
    )


def single_process_group() -> None:
    """A world of one (gloo), for benchmarks that drive the recipe in this process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        store = dist.FileStore(tempfile.mktemp(prefix="pg-"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)


@contextlib.contextmanager
def scratch_cwd(mlflow: bool = False) -> Iterator[Path]:
    """Run in a temporary working directory (runs/ and mlflow.db land there)."""
    old, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        if mlflow:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        try:
            yield Path(d)
        finally:
            os.chdir(old)
            if mlflow:
                if old_uri is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = old_uri


def bench_context(d: Path, data_url: str):
    """A RunContext for driving the recipe in this process: storage, checkpoints and scratch
    in `d`, the prepared data at `data_url`, and a fresh MLflow run in `d`/mlflow.db."""
    import time

    import mlflow

    from orchestrator.storage.layout import RunContext, RunStorage

    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    storage = RunStorage(str(d), "bench", "run", str(d / "ckpt"), scratch=str(d / "scratch"))
    return RunContext(
        storage=storage,
        data_url=data_url,
        tracking_uri=uri,
        mlflow_run_id=run_id,
        attempt=1,
        attempt_start_time=time.time(),
        usd_before_attempt=0.0,
        price_per_hour_usd=0.1,
        config_hash="bench",
    )


CKPT_MODEL = [
    "model.pretrained=null",
    "model.hidden_size=512",
    "model.intermediate_size=1376",
    "model.num_layers=8",
    "model.num_heads=8",
    "train.activation_checkpointing=false",
]
"""The checkpoint benchmarks' model: a ~25M-parameter Llama (vicuna's local shape, widened)."""


def ckpt_strategy(world: int, batch_shape: tuple[int, int], seed: int = 0):
    """(strategy, train_step) of the checkpoint benchmarks: CKPT_MODEL under vicuna's local
    strategy on `world` workers (a process group must exist), and one step on a fixed batch."""
    import torch

    from orchestrator.compose.load import compose
    from orchestrator.training.model import build_model
    from orchestrator.training.strategies import build_strategy

    cfg = compose("vicuna", "local", [*CKPT_MODEL, f"hardware.num_workers={world}"])
    strategy = build_strategy(build_model(cfg.model, 4096), cfg)
    batch = torch.randint(0, 4096, batch_shape, generator=torch.Generator().manual_seed(seed))

    def train_step() -> None:
        loss = strategy.model(input_ids=batch, labels=batch).loss
        strategy.backward(loss, True)
        strategy.step(1e-4, 1.0)

    return strategy, train_step


def join_s3_world(rank: int, world: int, d: str, s3_url: str) -> None:
    """A spawned benchmark rank: imports from the repo and `d` (a baseline package), moto's
    credentials and endpoint, one thread, and a gloo process group over a file store in `d`."""
    import sys

    import torch
    import torch.distributed as dist

    sys.path[:0] = [str(REPO), d]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=s3_url,
    )
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(d) / "pg"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)

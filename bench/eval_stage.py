"""What Koala's local eval stage adds, against the floor of any stage: a Ray Train worker group.

The eval stage is a pipeline stage like the others: its own Ray Train run whose workers load
the SFT export and its base, answer the question sample, and hand the answers to the
launcher's judge. In one local Ray cluster (2 CPUs), one go:

- `noop_fit_s`: a DataParallelTrainer of 2 workers whose function does nothing (the second of
  two, the cluster warm): Ray Train's controller and worker processes alone;
- `imports_fit_s`: the same, its workers importing what ours import (torch, transformers, the
  trainer's entry module): the floor of any stage with a worker group of its own;
- `koala_sft_s`, `koala_eval_s`: `make launch job=koala` at local scale (SFT, then eval), each
  stage's launch from its start to its bill (LaunchResult.wall_s);
- `eval_again_s`: the eval stage run again (`fresh=eval`), its judgments from the cache;
- `compose_s`, `compose_again_s`: composing the eval stage's config, then the same again
  (kept by what it is made of; a launch composes its job several times).

    .venv/bin/python bench/run.py eval_stage
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def _noop() -> None:
    pass


def _imports() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import orchestrator.training.entry  # noqa: F401


def _fit(fn, name: str, storage: str) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    t = time.time()
    DataParallelTrainer(
        fn,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(storage_path=storage, name=name),
    ).fit()
    return time.time() - t


def run() -> dict:
    from orchestrator.launch.pipeline import run_pipeline
    from orchestrator.launch.ray_session import ray_cluster

    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        os.environ["ORCHESTRATOR_STORAGE_ROOT"] = f"{d}/runs"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        with ray_cluster(num_cpus=2):
            _fit(_noop, "warm", f"{d}/rt")
            out["noop_fit_s"] = round(_fit(_noop, "noop", f"{d}/rt"), 1)
            out["imports_fit_s"] = round(_fit(_imports, "imports", f"{d}/rt"), 1)
            res = run_pipeline("koala", "local", [], "bench")
            out["status"] = res.stop_reason
            for stage in ("sft", "eval"):
                out[f"koala_{stage}_s"] = _wall(d, f"bench-{stage}")
            run_pipeline("koala", "local", [], "bench", fresh="eval")
            out["eval_again_s"] = _wall(d, "bench-eval-g1")
    out["eval_over_floor"] = round(out["koala_eval_s"] / out["imports_fit_s"], 2)
    out.update(_compose_times())
    return out


def _wall(d: str, run: str) -> float:
    path = Path(d) / "runs" / "koala" / run / "launch_result.json"
    return round(json.loads(path.read_text())["wall_s"], 1)


def _compose_times() -> dict:
    from orchestrator.compose import load

    load._COMPOSED.clear()
    t = time.perf_counter()
    load.compose("koala", "local", ["stage=eval"])
    first = time.perf_counter() - t
    t = time.perf_counter()
    load.compose("koala", "local", ["stage=eval"])
    again = time.perf_counter() - t
    return {"compose_s": round(first, 3), "compose_again_s": round(again, 3),
            "compose_again_vs_first": round(again / first, 2)}  # fmt: skip

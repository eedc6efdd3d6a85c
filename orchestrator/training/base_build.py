"""Build a local base (conf/bases/<name>.yaml): pretrain it in this process, a world of one,
with the recipe loop, and export it. Run by `training/bases.py` in a subprocess on first use:

    python -m orchestrator.training.base_build NAME OUT
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import torch.distributed as dist

from orchestrator.checkpoint.exports import write_model_manifest
from orchestrator.compose.load import compose
from orchestrator.data.dataset import prepare_data
from orchestrator.storage.layout import RunContext, RunResult, RunStorage, run_store
from orchestrator.training.bases import PREFIX, definition, local_base
from orchestrator.training.loop import Trainer


def build(name: str, out: Path) -> dict:
    """Pretrain the base in this process (a world of one) and export it to `out`."""
    cfg = compose(str(definition(name)), "local")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if not dist.is_initialized():
            store = dist.FileStore(str(d / "pg"), 1)
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        prepare_data(cfg.data, d / "data")
        uri = f"sqlite:///{d / 'mlflow.db'}"
        client = mlflow.tracking.MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("base")).info.run_id
        storage = RunStorage(str(d / "runs"), cfg.job, "build", str(d / "ckpt"), str(d / "scratch"))
        ctx = RunContext(storage, str(d / "data"), uri, run_id, 1, time.time(), 0.0, 0.0, "base")
        Trainer(cfg, ctx).run()
        export = Path(storage.run_url) / "export"
        result = RunResult.from_json(run_store(storage).read_text("result.json") or "{}")
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(export, tmp)
        for f in ("probe.pt", "samples.json"):
            (tmp / f).unlink(missing_ok=True)
        info = {
            "name": name,
            "id": out.name,
            "n_params": result.n_params,
            "tokens": result.tokens,
            "steps": result.step,
            "eval_loss": result.eval_loss,
            "torch": torch.__version__,
            "built": time.time(),
        }
        (tmp / "base.json").write_text(json.dumps(info, indent=1))
        write_model_manifest(tmp, "base")  # content-addressed, as every export
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return info


if __name__ == "__main__":
    if len(sys.argv) == 3:
        build(sys.argv[1], Path(sys.argv[2]))
    elif len(sys.argv) == 2:
        print(local_base(PREFIX + sys.argv[1]))  # built (or found) in the cache
    else:
        sys.exit("usage: python -m orchestrator.training.base_build NAME [OUT]")

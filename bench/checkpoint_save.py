"""Time per checkpoint save, blocked and total, vs the checkpointer before async DCP saves,
per-rank uploads and hashing while writing; local disk and S3 (moto_server), 2 ranks, 338 MB.

    .venv/bin/python bench/run.py checkpoint_save
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench._common import REPO, join_s3_world

IN_PROCESS = True  # spawns its own 2-rank process group: run before Ray starts

BASELINE_COMMIT = "64cdd2e"
"""The last commit with the previous checkpointer: rank 0 of each node writes the DCP shards
synchronously into node staging, one thread hashes every file by reading it back (one
`put_files` per node), the node leader uploads them file by file, and `async_save` only moved
that upload to the background."""

WORLD = 2


def _baseline_package(d: Path, commit: str = BASELINE_COMMIT) -> None:
    """`ckpt_baseline.{io,store,manifest}`: the checkpoint modules at `commit`, importing each
    other instead of today's."""
    pkg = d / "ckpt_baseline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("io", "store", "manifest"):
        src = subprocess.run(
            ["git", "show", f"{commit}:orchestrator/checkpoint/{name}.py"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        src = re.sub(r"orchestrator\.checkpoint\.(io|store|manifest)\b", r"ckpt_baseline.\1", src)
        (pkg / f"{name}.py").write_text(src)


def _rank_main(rank: int, d: str, s3_url: str, saves: int, out: str) -> None:
    import torch.distributed as dist

    join_s3_world(rank, WORLD, d, s3_url)

    import torch.distributed.checkpoint as dcp
    from ckpt_baseline.io import Checkpointer as Baseline
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from bench._common import ckpt_strategy
    from orchestrator.checkpoint.io import Checkpointer

    strategy, train_step = ckpt_strategy(WORLD, (2, 128), seed=rank)

    def old_write(folder: Path) -> None:  # what the baseline's strategy did
        model_sd, optim_sd = get_state_dict(strategy.model, strategy.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))

    train_step()  # the optimizer state exists from here on
    results = {}
    for code in ("baseline", "now"):
        for where in ("local", "s3"):
            for mode in ("sync", "async"):
                name = f"{code}_{where}_{mode}"
                url = str(Path(d) / name) if where == "local" else f"s3://bench/{name}"
                cls = Baseline if code == "baseline" else Checkpointer
                ck = cls(
                    url,
                    staging=Path(d) / f"stage_{name}",
                    keep_last=1,
                    async_save=mode == "async",
                )
                write = old_write if code == "baseline" else strategy.write_checkpoint
                for step in range(1, saves + 1):
                    train_step()
                    # Saves are minutes apart in training: the previous one has finished. Wait
                    # for it here, so `blocked` is what a save itself costs training.
                    ck.wait()
                    dist.barrier()
                    ck.save(step, write, {"step": step})
                ck.wait()
                dist.barrier()
                if rank == 0:
                    results[name] = {
                        "blocked_s": statistics.median(ck.stats.blocked_s),
                        "total_s": statistics.median(ck.stats.persist_s),
                        "bytes": ck.stats.bytes[-1],
                        "committed": len(ck.stats.committed),
                    }
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def run(saves: int = 3) -> dict:
    """Two ranks (FSDP2, gloo) of a ~29.5M-parameter Llama with its AdamW state (338 MB per
    checkpoint). Each of baseline/now x local/S3 x sync/async saves `saves` times, a training
    step before each save; per save, the median time training was blocked and the median time
    until the manifest was committed."""
    import boto3
    import torch.multiprocessing as mp

    from tests.faults import start_moto_server

    url, moto = start_moto_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory(dir=str(REPO / "bench")) as d:  # the repo's disk
            _baseline_package(Path(d))
            out = Path(d) / "results.json"
            mp.spawn(_rank_main, args=(d, url, saves, str(out)), nprocs=WORLD, join=True)
            raw = json.loads(out.read_text())
    finally:
        moto.kill()
    result: dict = {"world": WORLD, "saves_each": saves, "baseline_commit": BASELINE_COMMIT}
    result["checkpoint_mb"] = round(raw["now_local_sync"]["bytes"] / 2**20, 1)
    for name, r in raw.items():
        result[f"{name}_blocked_s"] = round(r["blocked_s"], 3)
        result[f"{name}_total_s"] = round(r["total_s"], 3)
        assert r["committed"] == saves, f"{name}: {r['committed']} of {saves} saves committed"
    for where in ("local", "s3"):
        for mode in ("sync", "async"):
            b, n = raw[f"baseline_{where}_{mode}"], raw[f"now_{where}_{mode}"]
            result[f"{where}_{mode}_blocked_now_over_baseline"] = round(
                n["blocked_s"] / b["blocked_s"], 3
            )
            result[f"{where}_{mode}_total_now_over_baseline"] = round(
                n["total_s"] / b["total_s"], 3
            )
    return result

"""Resume wall time and bytes fetched per rank from S3 (moto_server): each rank fetching and
verifying the blocks its load plan reads vs the node leader fetching the whole checkpoint;
2 ranks, 338 MB.

    .venv/bin/python bench/run.py checkpoint_resume
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import REPO, join_s3_world
from bench.checkpoint_save import _baseline_package as _package_at

IN_PROCESS = True  # spawns its own 2-rank process group: run before Ray starts

BASELINE_COMMIT = "efc42b0"
"""The last commit where a resume from S3 had each node's leader download every file of the
checkpoint and hash it on one thread while the node's other ranks waited."""

WORLD = 2

NOTE = (
    "one machine (2 cores) plays both ranks and the S3 endpoint. DCP stores the small "
    "replicated items (optimizer step counts) in one rank's file, so the baseline's leader "
    "fetched everything; now each rank fetches its own file and, of the other's, only the "
    "8 MiB blocks holding the items it reads (ranged GETs, each block checked against its "
    "hash in the signed manifest)"
)


def _rank_main(rank: int, d: str, s3_url: str, repeats: int, out: str) -> None:
    import torch.distributed as dist

    join_s3_world(rank, WORLD, d, s3_url)

    from ckpt_baseline.io import Checkpointer as Baseline

    from bench._common import ckpt_strategy
    from orchestrator.checkpoint.io import Checkpointer

    strategy, train_step = ckpt_strategy(WORLD, (2, 128), seed=rank)
    train_step()  # the optimizer state exists from here on
    url = "s3://bench/resume"
    saver = Checkpointer(url, staging=Path(d) / "stage", keep_last=1)
    saver.save(1, strategy.write_checkpoint, {"step": 1})
    dist.barrier()
    nbytes = saver.stats.bytes[-1] if rank == 0 else 0

    times: dict[str, list[float]] = {"baseline": [], "now": []}
    fetched: dict[str, int] = {}

    def read(folder: Path, _manifest: dict) -> None:
        strategy.read_checkpoint(folder)

    for i in range(repeats):
        for code in ("baseline", "now") if i % 2 == 0 else ("now", "baseline"):
            cache = Path(d) / f"cache_{code}_{i}"
            cls = Baseline if code == "baseline" else Checkpointer
            ck = cls(url, staging=Path(d) / f"st_{code}_{i}", keep_last=1)
            dist.barrier()
            t0 = time.perf_counter()
            if code == "now":
                found = ck.load_latest(read, cache, strategy.checkpoint_files)
                fetched[code] = ck.fetch_stats.fetched_bytes
            else:
                found = ck.load_latest(strategy.read_checkpoint, cache)
                fetched[code] = nbytes if ck.leader else 0  # the leader fetched all of it
            dist.barrier()
            times[code].append(time.perf_counter() - t0)
            assert found is not None and found[1]["step"] == 1
    per_rank: list = [None] * WORLD
    dist.all_gather_object(per_rank, fetched)
    if rank == 0:
        Path(out).write_text(json.dumps({"bytes": nbytes, "times": times, "fetched": per_rank}))
    dist.destroy_process_group()


def run(repeats: int = 3) -> dict:
    """Two ranks (FSDP2, gloo) of a ~29.5M-parameter Llama with its AdamW state, one checkpoint
    (338 MB) in moto S3; each way of resuming loads it `repeats` times (alternating which goes
    first); the median wall time from the first rank starting to the last rank holding the
    state, and the bytes each rank downloaded."""
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
            _package_at(Path(d), BASELINE_COMMIT)
            out = Path(d) / "results.json"
            mp.spawn(_rank_main, args=(d, url, repeats, str(out)), nprocs=WORLD, join=True)
            raw = json.loads(out.read_text())
    finally:
        moto.kill()
    base = statistics.median(raw["times"]["baseline"])
    now = statistics.median(raw["times"]["now"])
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {
        "world": WORLD,
        "repeats": repeats,
        "baseline_commit": BASELINE_COMMIT,
        "checkpoint_mb": mb(raw["bytes"]),
        "baseline_resume_s": round(base, 2),
        "now_resume_s": round(now, 2),
        "now_over_baseline": round(now / base, 3),
        "baseline_mb_fetched_per_rank": [mb(r["baseline"]) for r in raw["fetched"]],
        "now_mb_fetched_per_rank": [mb(r["now"]) for r in raw["fetched"]],
        "note": NOTE,
    }

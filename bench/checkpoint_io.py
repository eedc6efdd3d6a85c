"""Checkpoint MB/s to disk vs `dd` and to S3 (moto_server) vs boto3 upload_file; training time
lost to sync vs async saves.

    .venv/bin/python bench/run.py checkpoint_io
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench._common import REPO, single_process_group

IN_PROCESS = True  # drives torch.distributed in this process: run before Ray starts


def run(train_steps: int = 12, save_every: int = 3, threads: int = 2) -> dict:
    """Checkpoint throughput and what saving costs training, in one process (FSDP2, world 1),
    a ~25M-parameter Llama with its AdamW state (~300 MB):

    - save MB/s to local disk (DCP shards + sha256 manifest) against `dd` copying the same
      bytes on the same disk with fsync, and to S3 (moto_server on 127.0.0.1) against a plain
      boto3 `upload_file` of the same bytes;
    - a training loop saving every `save_every` steps to S3: wall time with no saves, sync saves
      and async saves (training blocks only while shards are written)."""
    import shutil
    import subprocess

    import boto3

    from bench._common import ckpt_strategy
    from orchestrator.checkpoint.io import Checkpointer

    torch.set_num_threads(threads)
    single_process_group()
    strategy, train_step = ckpt_strategy(1, (4, 256))
    n_params = sum(p.numel() for p in strategy.model.parameters())

    train_step()  # optimizer state exists from here on
    write_s: list[float] = []

    def write_shards(target, group):  # DCP's own write, timed: the rest is our overhead
        t = time.perf_counter()
        future = strategy.write_checkpoint(target, group)
        write_s.append(time.perf_counter() - t)
        return future

    from tests.faults import start_moto_server

    url, moto = start_moto_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=url,
    )
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    out: dict = {"n_params": n_params, "threads": threads}
    try:
        with tempfile.TemporaryDirectory(dir=str(REPO / "bench")) as d:  # the repo's disk
            d = Path(d)

            def saver(url: str, async_save: bool = False) -> Checkpointer:
                return Checkpointer(url, staging=d / "staging", keep_last=1, async_save=async_save)

            # 1. local disk: our save vs dd of the same bytes
            local = saver(str(d / "local"))
            for step in (1, 2, 3):
                local.save(step, write_shards, {"step": step})
            nbytes = local.stats.bytes[-1]
            mb = nbytes / 2**20
            save_s = min(local.stats.blocked_s)
            folder = d / "local" / "step_00000003"
            blob = d / "blob.bin"
            with blob.open("wb") as f:
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and p.name != "manifest.json":
                        f.write(p.read_bytes())
            dd_s = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run(
                    ["dd", f"if={blob}", f"of={d / 'dd.bin'}", "bs=4M", "conv=fsync"],
                    check=True,
                    capture_output=True,
                )
                dd_s.append(time.perf_counter() - t)
                (d / "dd.bin").unlink()
            out["checkpoint_mb"] = round(mb, 1)
            out["local_save_mb_per_s"] = round(mb / save_s, 1)
            out["dd_same_bytes_mb_per_s"] = round(mb / min(dd_s), 1)
            out["local_save_over_dd"] = round(min(dd_s) / save_s, 3)
            out["local_save_s"] = round(save_s, 3)
            out["of_which_dcp_write_s"] = round(min(write_s), 3)  # serialise + write + fsync

            # 2. S3: our save (upload + verify sizes + manifest) vs boto3 upload_file
            remote = saver("s3://bench/ckpt")
            for step in (1, 2):
                remote.save(step, write_shards, {"step": step})
            s3_save_s = min(remote.stats.blocked_s)
            up_s = []
            for i in range(2):
                t = time.perf_counter()
                s3.upload_file(str(blob), "bench", f"raw/blob{i}.bin")
                up_s.append(time.perf_counter() - t)
            out["s3_save_mb_per_s"] = round(mb / s3_save_s, 1)
            out["s3_upload_file_same_bytes_mb_per_s"] = round(mb / min(up_s), 1)
            out["s3_save_over_upload_file"] = round(min(up_s) / s3_save_s, 3)

            # 3. training blocked by saves to S3: none vs sync vs async
            def loop(mode: str) -> tuple[float, float]:
                ck = saver(f"s3://bench/{mode}", async_save=mode == "async")
                t = time.perf_counter()
                for step in range(1, train_steps + 1):
                    train_step()
                    if mode != "none" and step % save_every == 0:
                        ck.save(step, write_shards, {"step": step})
                ck.wait()
                return time.perf_counter() - t, sum(ck.stats.blocked_s)

            loops = {m: loop(m) for m in ("none", "sync", "async", "none")}  # none twice: warm
            none_s = loops["none"][0]
            for m in ("sync", "async"):
                wall, blocked = loops[m]
                out[f"train_{m}_wall_s"] = round(wall, 2)
                out[f"train_{m}_blocked_s"] = round(blocked, 2)
                out[f"train_{m}_overhead_vs_no_saves"] = round(wall / none_s - 1, 3)
            out["train_none_wall_s"] = round(none_s, 2)
            out["train_steps"], out["saves"] = train_steps, train_steps // save_every
            shutil.rmtree(d / "staging", ignore_errors=True)
    finally:
        moto.kill()
    return out

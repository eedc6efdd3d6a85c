"""Collective checkpoint save/load around a strategy's own writer (DCP or DeepSpeed).

Every rank writes its shards into `.tmp-step_XXXXXXXX/` plus its RNG state; after a barrier rank 0
commits the manifest and publishes the folder (see `manifest.py`), then prunes old ones.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.checkpoint.manifest import (
    commit,
    latest_complete,
    prune,
    step_dirname,
    tmp_dirname,
)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(
    root: Path,
    step: int,
    write_shards: Callable[[Path], None],
    state: dict[str, Any],
    keep_last: int,
) -> tuple[Path, float]:
    """Save a complete checkpoint of `step` under `root`. Returns (folder, seconds). Collective."""
    t0 = time.perf_counter()
    final, tmp = root / step_dirname(step), root / tmp_dirname(step)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    write_shards(tmp)
    torch.save(torch.get_rng_state(), tmp / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        commit(tmp, final, state)
        prune(root, keep_last)
    _barrier()
    return final, time.perf_counter() - t0


def find_latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """Rank 0 picks the newest complete checkpoint and tells the others. Collective."""
    found = [latest_complete(root) if _rank() == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(found, src=0)
    return found[0]


def load(ckpt: Path, read_shards: Callable[[Path], None]) -> None:
    """Load shards (the strategy reshards where it can) and this rank's RNG state. Collective."""
    read_shards(ckpt)
    rng = ckpt / f"rng_rank{_rank()}.pt"
    if rng.exists():  # absent when resuming on more workers than saved
        torch.set_rng_state(torch.load(rng))

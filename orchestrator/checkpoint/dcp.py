"""Sharded checkpoints of an FSDP2 model + optimizer with torch.distributed.checkpoint (DCP).

Every rank writes its own shards; rank 0 then commits the manifest (see `manifest.py`). Loading
works on any worker count DCP can reshard to.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

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


def save(root: Path, step: int, model, optimizer, state: dict[str, Any], keep_last: int) -> Path:
    """Save a complete checkpoint of `step` under `root`; returns its folder. Collective."""
    final, tmp = root / step_dirname(step), root / tmp_dirname(step)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(torch.get_rng_state(), tmp / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        commit(tmp, final, state)
        prune(root, keep_last)
    _barrier()
    return final


def find_latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """Rank 0 picks the newest complete checkpoint and tells the others. Collective."""
    found = [latest_complete(root) if _rank() == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(found, src=0)
    return found[0]


def load(ckpt: Path, model, optimizer) -> None:
    """Load model + optimizer shards (resharding as needed) and this rank's RNG state. Collective."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    rng = ckpt / f"rng_rank{_rank()}.pt"
    if rng.exists():  # absent when resuming on more workers than saved
        torch.set_rng_state(torch.load(rng))

"""Collective checkpoint save/load around a strategy's own writer (DCP or DeepSpeed).

Save (every rank calls it at the same step):
  1. wait for the previous save to be persisted (saves never overlap);
  2. every rank writes its shards and its RNG state into a local staging folder (blocking);
  3. persist: each node's leader makes its node's files durable (`store.put_files`: hashes, and
     on S3 uploads); the parts are gathered on rank 0, which writes the manifest last
     (`store.commit`) and prunes. With `async_save` step 3 runs in a background thread, on its
     own gloo process group, while training goes on.

A persist that fails (S3 down beyond the retries, disk full) leaves no complete checkpoint for
that step and a warning; training continues and the next save tries again. Loading takes the
newest checkpoint whose files verify against their manifest, skipping broken ones by name.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.checkpoint.manifest import FILES_KEY, step_dirname
from orchestrator.checkpoint.store import IncompleteCheckpoint, LocalStore, open_store

log = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def node_key() -> str:
    """This process's node: the Ray node id (each raylet has its own disks), else the host."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    import socket

    return socket.gethostname()


def node_leader() -> tuple[bool, str]:
    """(is this rank its node's leader, the node's key). Collective. The leader is the lowest
    rank on each Ray node. Ray Train's local rank groups workers by IP address, which two nodes
    can share (several raylets per host, containers behind one address); a node's disk is its
    raylet's, so leadership goes by node id."""
    key = node_key()
    if not dist.is_initialized():
        return True, key
    keys: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(keys, key)
    return keys.index(key) == dist.get_rank(), key


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:64] or "node"


@dataclass
class SaveStats:
    blocked_s: list[float] = field(default_factory=list)
    """Time training waited per save (writing shards + waiting for the previous persist, and
    the whole persist when saving synchronously)."""
    persist_s: list[float] = field(default_factory=list)
    """Wall time from the start of a save until its manifest was committed."""
    committed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)


class Checkpointer:
    """Saves and loads checkpoints of one run. Collective: every rank makes the same calls.

    Args:
        url: a folder, or `s3://bucket/prefix`.
        staging: a node-local folder for shards before they are uploaded (S3 only); each node
            stages in its own subfolder (named by its node key).
        async_save: persist in the background (training blocks only while shards are written).
    """

    def __init__(
        self,
        url: str,
        staging: Path,
        keep_last: int,
        keep_every: int | None = None,
        async_save: bool = False,
    ) -> None:
        self.store = open_store(url)
        self.keep_last, self.keep_every = keep_last, keep_every
        self.async_save = async_save
        self.rank = _rank()
        self.leader, self.node = node_leader()
        # Per node: two raylets on one host (or one shared scratch) never stage into one folder.
        self.staging = staging / _safe_name(self.node)
        # A separate group, so a background persist never interleaves with training collectives.
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._pending: threading.Thread | None = None
        self.stats = SaveStats()

    # ------------------------------------------------------------------ save
    def save(self, step: int, write_shards: Callable[[Path], None], state: dict[str, Any]) -> float:
        """Checkpoint `step`. Returns the seconds training was blocked."""
        t0 = time.perf_counter()
        self.wait()
        staging = self.store.staging_dir(step, self.staging)
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        _barrier()
        if self.leader:  # staging is node-local: one folder per node
            staging.mkdir(parents=True, exist_ok=True)
        _barrier()
        write_shards(staging)
        torch.save(torch.get_rng_state(), staging / f"rng_rank{self.rank}.pt")
        _barrier()
        if self.async_save:
            self._pending = threading.Thread(
                target=self._persist, args=(step, staging, state, t0), daemon=True
            )
            self._pending.start()
        else:
            self._persist(step, staging, state, t0)
        blocked = time.perf_counter() - t0
        self.stats.blocked_s.append(blocked)
        return blocked

    def wait(self) -> None:
        """Block until the previous save is persisted (or has failed)."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None

    def _persist(self, step: int, staging: Path, state: dict[str, Any], t0: float) -> None:
        part: dict[str, Any] | None = None
        if self.leader:
            try:
                part = {"files": self.store.put_files(staging, step)}
            except Exception as e:  # noqa: BLE001 - a storage hiccup must not kill training
                part = {"error": f"{type(e).__name__}: {e}"}
        parts: list[dict[str, Any] | None] = [None] * (
            dist.get_world_size() if dist.is_initialized() else 1
        )
        if dist.is_initialized():
            dist.all_gather_object(parts, part, group=self.group)
        else:
            parts = [part]
        if self.rank == 0:
            errors = [p["error"] for p in parts if p and "error" in p]
            files: dict[str, Any] = {}
            for p in parts:
                files.update((p or {}).get("files", {}))
            try:
                if errors:
                    raise RuntimeError("; ".join(errors))
                manifest = {**state, FILES_KEY: files, "committed_at": time.time()}
                self.store.commit(step, staging, manifest)
                self.stats.committed.append(step)
                self.stats.bytes.append(sum(f["bytes"] for f in files.values()))
                self.stats.persist_s.append(time.perf_counter() - t0)
                self.store.prune(self.keep_last, self.keep_every, newest_committed=step)
            except Exception as e:  # noqa: BLE001
                self.stats.failed.append(step)
                log.warning(
                    "checkpoint %s was NOT committed to %s (training continues; the previous "
                    "complete checkpoint stays the resume point): %s",
                    step_dirname(step),
                    self.store.url,
                    e,
                )
        if dist.is_initialized():
            dist.barrier(group=self.group)
        if self.leader:
            self.store.discard_staging(staging)

    # ------------------------------------------------------------------ load
    def load_latest(
        self, read_shards: Callable[[Path], None], cache: Path
    ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest complete checkpoint (shards + this rank's RNG). Returns (folder,
        manifest), or None when there is none. A checkpoint that fails verification is skipped
        with a warning naming it, and the next older one is tried. From S3, each node's leader
        downloads the checkpoint into `cache` (node-local) and the node's other ranks read it."""
        cache = cache / _safe_name(self.node)
        steps = [self.store.complete_steps() if self.rank == 0 else None]
        if dist.is_initialized():
            dist.broadcast_object_list(steps, src=0)
        for step in steps[0] or []:
            ok, folder, manifest = True, None, None
            if self.leader:
                try:
                    folder = self.store.fetch(step, cache)
                    manifest = self.store.read_manifest(step)
                except IncompleteCheckpoint as e:
                    log.warning("skipping incomplete checkpoint: %s", e)
                    ok = False
            flag = torch.tensor([1 if ok else 0])
            if dist.is_initialized():
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if not flag.item():
                continue
            found = [(folder, manifest) if self.rank == 0 else None]
            if dist.is_initialized():
                dist.broadcast_object_list(found, src=0)
            folder0, manifest = found[0]
            if folder is None:  # not a node leader: read the leader's copy on this node
                in_place = isinstance(self.store, LocalStore)
                folder = folder0 if in_place else cache / step_dirname(step)
            read_shards(folder)
            rng = folder / f"rng_rank{self.rank}.pt"
            if rng.exists():  # absent when resuming on more workers than saved
                torch.set_rng_state(torch.load(rng, weights_only=True))  # a tensor, no pickle
            _barrier()
            if self.leader and not isinstance(self.store, LocalStore):
                shutil.rmtree(folder, ignore_errors=True)  # the downloaded copy
            return folder0, manifest
        return None

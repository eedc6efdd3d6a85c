"""Collective checkpoint save/load around a strategy's own writer (DCP or DeepSpeed).

Save (every rank calls it at the same step):
  1. wait for the previous save to be persisted (saves never overlap);
  2. every rank writes its shards and its RNG state into its own folder (`SaveTarget`): for an
     S3 store a node-local staging folder per rank, for a folder store the checkpoint's own
     temporary folder. Files are hashed as they are written. With `async_save` and DCP
     (`dcp.async_save`), training blocks only while the state is copied to CPU memory;
  3. persist: every rank uploads its own files (in parallel across ranks; S3) and reports their
     sizes and hashes; the parts are gathered on rank 0, which writes the manifest last
     (`store.commit`) and prunes. With `async_save` steps 2's write and 3 run in a background
     thread, on their own gloo process group, while training goes on.

A persist that fails (S3 down beyond the retries, disk full) leaves no complete checkpoint for
that step and a warning; training continues and the next save tries again. Loading takes the
newest checkpoint whose files verify against their manifest, skipping broken ones by name.
"""

from __future__ import annotations

import io
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

from orchestrator.checkpoint.fetch import FetchStats, Reads
from orchestrator.checkpoint.hashing import SaveTarget
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
        self.fetch_stats = FetchStats()  # of the last load

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        write_shards: Callable[[SaveTarget, dist.ProcessGroup | None], Any],
        state: dict[str, Any],
    ) -> float:
        """Checkpoint `step`. `write_shards(target, group)` writes this rank's part into
        `target`; given a process group it may return a future (an async DCP save running on
        that group). Returns the seconds training was blocked."""
        t0 = time.perf_counter()
        self.wait()
        shared = isinstance(self.store, LocalStore)
        root = self.store.staging_dir(step, self.staging)
        folder = root if shared else root / f"rank_{self.rank:05d}"
        if self.rank == 0 and shared:
            shutil.rmtree(root, ignore_errors=True)
        if not shared:
            shutil.rmtree(folder, ignore_errors=True)
        _barrier()
        folder.mkdir(parents=True, exist_ok=True)
        _barrier()
        target = SaveTarget(folder, self.rank)
        future = write_shards(target, self.group if self.async_save else None)
        buf = io.BytesIO()
        torch.save(torch.get_rng_state(), buf)
        target.write_bytes(f"rng_rank{self.rank}.pt", buf.getvalue())
        if self.async_save:
            self._pending = threading.Thread(
                target=self._persist, args=(step, target, future, state, t0, shared), daemon=True
            )
            self._pending.start()
        else:
            if future is not None:
                future.result()
            self._persist(step, target, None, state, t0, shared)
        blocked = time.perf_counter() - t0
        self.stats.blocked_s.append(blocked)
        return blocked

    def wait(self) -> None:
        """Block until the previous save is persisted (or has failed)."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None

    def _persist(
        self, step: int, target: SaveTarget, future, state: dict[str, Any], t0: float, shared: bool
    ) -> None:
        part: dict[str, Any] | None = None
        try:
            if future is not None:
                future.result()  # the async write of this rank's shards
            if shared:  # one folder for all ranks: report what this rank wrote (hashed)
                part = {"files": target.written()}
            else:  # every rank uploads its own folder's files, in parallel
                files = target.files()
                self.store.put_files(target.folder, step, files)
                part = {"files": files}
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
            try:
                if errors:
                    raise RuntimeError("; ".join(errors))
                files = {}
                for p in parts:
                    files.update((p or {}).get("files") or {})
                if shared:  # files written around the targets (DeepSpeed's): hashed now
                    on_disk = {
                        str(f.relative_to(target.folder))
                        for f in target.folder.rglob("*")
                        if f.is_file()
                    }
                    files.update(target.files(sorted(on_disk - set(files))))
                manifest = {**state, FILES_KEY: files, "committed_at": time.time()}
                self.store.commit(step, target.folder, manifest)
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
        if not shared:
            self.store.discard_staging(target.folder)

    def save_fits(self, window_s: float) -> bool:
        """Would a save finish within `window_s` (a spot notice's)? Collective: decided on rank
        0 from its measured saves (written and committed, the longest of the last three; a save
        still in flight counts twice) and broadcast, so every rank makes the same choice.
        Unknown before the first save: try."""
        fits = torch.tensor([1])
        if self.rank == 0:
            times = self.stats.persist_s[-3:] or self.stats.blocked_s[-3:]
            need = max(times, default=0.0) * (2 if self._pending is not None else 1)
            fits[0] = int(need <= window_s)
        if dist.is_initialized():
            dist.broadcast(fits, src=0)
        return bool(fits.item())

    # ------------------------------------------------------------------ load
    def load_latest(
        self,
        read_shards: Callable[[Path, dict[str, Any]], None],
        cache: Path,
        plan_files: Callable[[Callable[[list[str]], Path]], Reads | None] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest complete checkpoint (shards + this rank's RNG). Returns (folder,
        manifest), or None when there is none. `read_shards(folder, manifest)` reads the
        strategy's shards; the folder holds only the files this rank reads (the manifest, checked
        once on rank 0, lists them all). Every rank fetches and verifies only what it reads
        (checkpoint/fetch.py): `plan_files(ensure)` gives the byte ranges of the strategy's
        shard files this rank reads (DCP's load plan; None: every shard file, whole), after
        `ensure`-ing what it needs to plan. A checkpoint that fails verification on any rank is skipped with a
        warning naming it, and the next older one is tried."""
        from orchestrator.checkpoint.fetch import RankFetch, rank_files

        cache = cache / _safe_name(self.node)
        steps = [self.store.complete_steps() if self.rank == 0 else None]
        if dist.is_initialized():
            dist.broadcast_object_list(steps, src=0)
        for step in steps[0] or []:
            got: list[Any] = [None]
            if self.rank == 0:  # one read of the manifest, checked (signature, paths)
                try:
                    got = [self.store.read_manifest(step)]
                except IncompleteCheckpoint as e:
                    got = [str(e)]
            if dist.is_initialized():
                dist.broadcast_object_list(got, src=0)
            if isinstance(got[0], str):
                log.warning("skipping incomplete checkpoint: %s", got[0])
                continue
            manifest = got[0]
            fetch = RankFetch(self.store, step, manifest, cache)
            ok, error = 1, None
            try:
                shards = plan_files(fetch.ensure) if plan_files is not None else None
                fetch.ensure(rank_files(manifest[FILES_KEY], self.rank, shards), shards)
            except IncompleteCheckpoint as e:
                log.warning("skipping incomplete checkpoint: %s", e)
                ok = 0
            except Exception as e:  # noqa: BLE001 - every rank raises below, not only this one
                ok, error = -1, e
            flag = torch.tensor([ok])
            if dist.is_initialized():
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item() < 0:  # not a broken checkpoint: a fault, on some rank
                if error is not None:
                    raise error
                raise RuntimeError(f"loading {step_dirname(step)} failed on another rank")
            if not flag.item():
                _barrier()
                if self.leader and not fetch.in_place:
                    shutil.rmtree(fetch.folder.parent, ignore_errors=True)
                continue
            folder = fetch.folder
            read_shards(folder, manifest)
            rng = folder / f"rng_rank{self.rank}.pt"
            if rng.exists():  # absent when resuming on more workers than saved
                torch.set_rng_state(torch.load(rng, weights_only=True))  # a tensor, no pickle
            self.fetch_stats = fetch.stats
            log.info(
                "checkpoint %s: rank %d read %d files, fetched %.1f MB, verified %.1f MB",
                step_dirname(step), self.rank, len(fetch.stats.files),
                fetch.stats.fetched_bytes / 1e6, fetch.stats.verified_bytes / 1e6,
            )  # fmt: skip
            _barrier()
            if self.leader and not fetch.in_place:
                shutil.rmtree(folder.parent, ignore_errors=True)  # the downloaded copy
            return folder, manifest
        return None

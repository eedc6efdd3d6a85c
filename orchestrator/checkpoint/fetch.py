"""Each rank fetches and verifies only the checkpoint files it reads.

A 13B FSDP checkpoint is ~156 GB in 64 rank files. Fetched whole by one process per node and
hashed on one thread, a resume idled eight GPUs for 10-15 minutes (and timed out the collective
below ~120 MB/s). Here every rank asks for its own files, at the current world size:

- DCP: the shared `.metadata`, then the byte ranges of the `.distcp` files its load plan reads
  (the plan is the one `dcp.load` makes: the rank's shards of the state dict against the
  checkpoint's metadata, so a resume on another worker count fetches whatever the resharding
  needs). A large file is fetched by the blocks covering those ranges (ranged GETs), each block
  checked against its hash in the signed manifest (checkpoint/blocks.py): DCP stores replicated
  items once, in some rank's file, and a rank reading a few KB of another rank's file fetches
  one block of it, not the file;
- DeepSpeed: its own `zero_pp_rank_<rank>_*` files and the shared ones;
- its own `rng_rank<rank>.pt`, and every file no rank owns (the metrics tail).

Files land in a node-local folder shared by the node's ranks: a file is downloaded by the first
rank that needs it (a per-file lock), hashed while it is written and renamed into place only when
its SHA-256 matches the manifest, so a file that exists without a `.blocks` record beside it is
verified whole. A file fetched in part is a sparse file of its full size, and its `.blocks` record
lists the blocks written and verified so far. The node's ranks download in parallel, and each
rank uses a few threads. From a folder store (`LocalStore`) nothing is copied: each rank verifies
what it reads (files, or their blocks) in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.checkpoint.blocks import block_runs, needed_blocks
from orchestrator.checkpoint.manifest import FILES_KEY, MANIFEST, step_dirname

THREADS = 4
"""Downloads in flight per rank (a node's 8 ranks: 32)."""

_RANK_OWNED = (re.compile(r"(?:^|/)rng_rank(\d+)\.pt$"), re.compile(r"(?:^|/)zero_pp_rank_(\d+)_"))
_DISTCP = re.compile(r"(?:^|/)__\d+_\d+\.distcp$")


Reads = Mapping[str, list[tuple[int, int]]]
"""{file: [(offset, length), ...]}: the byte ranges a rank's load plan reads from each file."""


def rank_files(
    files: Iterable[str], rank: int, dcp_shards: Iterable[str] | None = None
) -> set[str]:
    """Pure: the checkpoint files rank `rank` reads. Files owned by a rank (RNG states,
    DeepSpeed's ZeRO partitions) only its own; DCP shard files only those in `dcp_shards` (its
    load plan's; None: all of them); everything else (metadata, shared module states, the
    metrics tail) always."""
    out = set()
    for rel in files:
        owner = next((m for p in _RANK_OWNED if (m := p.search(rel))), None)
        if owner is not None:
            if int(owner.group(1)) == rank:
                out.add(rel)
        elif _DISTCP.search(rel):
            if dcp_shards is None or rel in dcp_shards:
                out.add(rel)
        else:
            out.add(rel)
    return out


def dcp_plan_reads(state: dict[str, Any], metadata_path: Path, rank: int) -> dict[str, list]:
    """The byte ranges `dcp.load(state)` will read on this rank, per `.distcp` file: DCP's
    default load plan for the rank's state dict (its shards under FSDP), mapped through the
    metadata's storage index (DCP reads each planned item's whole stored range). `metadata_path`
    must already be verified (it is a pickle)."""
    import pickle

    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    with open(metadata_path, "rb") as f:
        metadata = pickle.load(f)  # noqa: S301 - its SHA-256 matched the signed manifest
    planner = DefaultLoadPlanner()
    planner.set_up_planner(state, metadata, rank == 0)
    plan = planner.create_local_plan()
    data = metadata.storage_data
    reads: dict[str, list[tuple[int, int]]] = {}
    for item in plan.items:
        info = data[item.storage_index]
        reads.setdefault(info.relative_path, []).append((info.offset, info.length))
    return reads


@dataclass
class FetchStats:
    fetched_bytes: int = 0
    """Downloaded by this rank (0 from a folder store)."""
    verified_bytes: int = 0
    """Hashed by this rank (downloaded or read in place)."""
    files: list[str] = field(default_factory=list)


class RankFetch:
    """The files of one checkpoint that one rank reads, made present and verified on demand."""

    def __init__(self, store, step: int, manifest: dict[str, Any], cache: Path) -> None:
        from orchestrator.checkpoint.store import LocalStore

        self.store, self.step, self.manifest = store, step, manifest
        self.in_place = isinstance(store, LocalStore)
        if self.in_place:
            self.folder = store.root / step_dirname(step)
        else:  # keyed by the manifest: a step saved again (after a rollback) is another folder
            tag = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
            self.folder = cache / tag / step_dirname(step)
        self.stats = FetchStats()
        self._done: set[str] = set()

    def ensure(self, rels: Iterable[str], reads: Reads | None = None) -> Path:
        """Every file in `rels` present in `self.folder` and matching its manifest entry; for a
        file in `reads` with block hashes, only the blocks covering its ranges.

        Raises:
            IncompleteCheckpoint: a file is missing, listed with another size, or corrupted.
        """
        from orchestrator.checkpoint.store import IncompleteCheckpoint

        todo = sorted(set(rels) - self._done)
        listed = self.manifest[FILES_KEY]
        unknown = [r for r in todo if r not in listed]
        if unknown:
            raise IncompleteCheckpoint(f"{self._where(unknown[0])}: not in the manifest")
        if not self.in_place:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / MANIFEST).exists():  # what the reader checks the state with
                tmp = self.folder / f"{MANIFEST}.{os.getpid()}.part"
                tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
                tmp.replace(self.folder / MANIFEST)

        def one(rel: str) -> None:
            meta = listed[rel]
            if reads is None or rel not in reads or "blocks" not in meta:
                return self._one(rel)
            blocks = needed_blocks(reads[rel], meta["bytes"], meta["block_bytes"])
            if len(blocks) == len(meta["blocks"]):
                return self._one(rel)
            return self._blocks(rel, blocks)

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            list(pool.map(one, todo))
        self._done.update(todo)
        self.stats.files.extend(todo)
        return self.folder

    def _where(self, rel: str) -> str:
        return f"{self.store.url}/{step_dirname(self.step)}/{rel}"

    def _one(self, rel: str) -> None:
        from orchestrator.checkpoint.store import IncompleteCheckpoint

        meta = self.manifest[FILES_KEY][rel]
        dest = self.folder / rel
        if self.in_place:
            if not dest.is_file() or dest.is_symlink() or dest.stat().st_size != meta["bytes"]:
                raise IncompleteCheckpoint(f"{self._where(rel)}: missing or of the wrong size")
            if _sha256(dest) != meta["sha256"]:
                raise IncompleteCheckpoint(f"{self._where(rel)}: does not match its sha256")
            self.stats.verified_bytes += meta["bytes"]
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        record = _record(dest)
        with open(dest.with_name(dest.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per file per node
            if dest.exists() and not record.exists():  # another rank fetched and verified it
                return
            key = self.store._key(self.step, rel)
            part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
            try:
                try:
                    self.store.s3.download(self.store.bucket, key, part)
                except Exception as e:  # noqa: BLE001 - named below
                    raise IncompleteCheckpoint(f"{self._where(rel)}: {e}") from None
                size = part.stat().st_size
                if size != meta["bytes"]:
                    raise IncompleteCheckpoint(
                        f"{self._where(rel)}: {size} bytes, the manifest says {meta['bytes']}"
                    )
                if _sha256(part) != meta["sha256"]:
                    raise IncompleteCheckpoint(f"{self._where(rel)}: does not match its sha256")
                part.replace(dest)  # a reader of the partial copy keeps the inode it opened
                record.unlink(missing_ok=True)
            finally:
                part.unlink(missing_ok=True)
            self.stats.fetched_bytes += meta["bytes"]
            self.stats.verified_bytes += meta["bytes"]

    def _blocks(self, rel: str, blocks: list[int]) -> None:
        """Blocks `blocks` of `rel` present in `self.folder/rel` and matching their hashes."""
        from orchestrator.checkpoint.store import IncompleteCheckpoint

        meta = self.manifest[FILES_KEY][rel]
        size, block = meta["bytes"], meta["block_bytes"]
        dest = self.folder / rel

        def span(i: int) -> tuple[int, int]:
            return i * block, min((i + 1) * block, size)

        def check(i: int, data: bytes) -> None:
            if hashlib.sha256(data).hexdigest() != meta["blocks"][i]:
                raise IncompleteCheckpoint(
                    f"{self._where(rel)}: block {i} does not match its sha256"
                )

        if self.in_place:
            if not dest.is_file() or dest.is_symlink() or dest.stat().st_size != size:
                raise IncompleteCheckpoint(f"{self._where(rel)}: missing or of the wrong size")
            with open(dest, "rb") as src:
                for i in blocks:
                    start, end = span(i)
                    src.seek(start)
                    check(i, src.read(end - start))
                    self.stats.verified_bytes += end - start
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        record = _record(dest)
        with open(dest.with_name(dest.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if dest.exists() and not record.exists():  # fetched whole, and verified
                return
            have = set(json.loads(record.read_text())) if record.exists() else set()
            if not dest.exists():  # the record first: a file without one reads as verified
                record.write_text("[]")
                with open(dest, "wb") as new:
                    new.truncate(size)  # sparse: only the fetched blocks take disk
            todo = [i for i in blocks if i not in have]
            key = self.store._key(self.step, rel)
            with open(dest, "r+b") as f:
                for first, last in block_runs(todo):
                    start, end = span(first)[0], span(last)[1]
                    try:
                        data = self.store.s3.get_range(self.store.bucket, key, start, end)
                    except Exception as e:  # noqa: BLE001 - named below
                        raise IncompleteCheckpoint(f"{self._where(rel)}: {e}") from None
                    for i in range(first, last + 1):
                        a, b = span(i)
                        check(i, data[a - start : b - start])
                    f.seek(start)
                    f.write(data)
                    self.stats.fetched_bytes += end - start
                    self.stats.verified_bytes += end - start
                f.flush()
            have.update(todo)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.part")
            tmp.write_text(json.dumps(sorted(have)))
            tmp.replace(record)


def _record(dest: Path) -> Path:
    """Beside a file fetched in part: the blocks of it written and verified."""
    return dest.with_name(dest.name + ".blocks")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):  # hashlib releases the GIL: threads hash in parallel
            h.update(chunk)
    return h.hexdigest()

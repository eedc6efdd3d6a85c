"""Block hashes: a checkpoint file verifiable in pieces, so a rank can fetch only the bytes it reads.

DCP writes each rank's shards into that rank's `.distcp` file, but stores every replicated item
(optimizer step counts, param groups) once, in whichever rank's file its dedup chose. A rank
resuming reads its own file and a few small items from another's; fetched per file, rank 0 of a
2-rank checkpoint downloaded all of it. With a SHA-256 per fixed-size block of every large file
(recorded in the signed manifest, computed while the file is written), a rank fetches the blocks
covering the byte ranges its load plan reads (ranged GETs) and verifies each one: ~its shard.

Pure helpers here; the fetch is `checkpoint/fetch.py`, the hashing while writing
`checkpoint/hashing.py`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BLOCK_BYTES = 8 << 20
"""8 MiB, the S3 multipart part size this project uploads with. At 13B (~156 GB) that is ~19k
hashes, ~1.2 MB of manifest; a rank reading one small item of another's file fetches 8 MiB."""
MIN_BLOCK, MAX_BLOCK = 64 << 10, 1 << 30
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlockHasher:
    """SHA-256 of a whole stream and of each `block` bytes of it, fed in any chunk sizes."""

    def __init__(self, block: int | None = None) -> None:
        self.block, self.n = block or BLOCK_BYTES, 0
        self.whole, self._cur = hashlib.sha256(), hashlib.sha256()
        self._in_cur = 0
        self.blocks: list[str] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.whole.update(view)
        self.n += len(view)
        while len(view):
            take = min(len(view), self.block - self._in_cur)
            self._cur.update(view[:take])
            self._in_cur += take
            view = view[take:]
            if self._in_cur == self.block:
                self.blocks.append(self._cur.hexdigest())
                self._cur, self._in_cur = hashlib.sha256(), 0

    def entry(self) -> dict[str, Any]:
        """The manifest entry: size and SHA-256, and block hashes when there is more than one
        block (a one-block file is verified by its own hash)."""
        blocks = self.blocks + ([self._cur.hexdigest()] if self._in_cur else [])
        out: dict[str, Any] = {"bytes": self.n, "sha256": self.whole.hexdigest()}
        if len(blocks) > 1:
            out.update(block_bytes=self.block, blocks=blocks)
        return out


def hash_file(path: Path, block: int | None = None) -> dict[str, Any]:
    """`BlockHasher.entry()` of a file on disk."""
    h = BlockHasher(block)
    with open(path, "rb") as f:
        while chunk := f.read(h.block):
            h.update(chunk)
    return h.entry()


def check_entry(meta: dict[str, Any]) -> str | None:
    """Pure: what is wrong with an entry's block hashes (None: absent, or consistent)."""
    if "blocks" not in meta and "block_bytes" not in meta:
        return None
    size, blocks = meta.get("block_bytes"), meta.get("blocks")
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_BLOCK <= size <= MAX_BLOCK:
        return f"block_bytes={size!r} is not between {MIN_BLOCK} and {MAX_BLOCK}"
    if not isinstance(blocks, list) or not all(
        isinstance(b, str) and _SHA256.match(b) for b in blocks
    ):
        return "blocks is not a list of sha256 digests"
    if len(blocks) != -(-meta["bytes"] // size):
        return f"{len(blocks)} block hashes for {meta['bytes']} bytes in blocks of {size}"
    return None


def needed_blocks(ranges: Iterable[tuple[int, int]], size: int, block: int) -> list[int]:
    """Pure: the indices of the blocks covering byte ranges (offset, length) of a file of `size`
    bytes, sorted. Ranges past the end are clipped (the manifest's size is the truth)."""
    out: set[int] = set()
    for offset, length in ranges:
        end = min(offset + length, size)
        if length <= 0 or offset >= end:
            continue
        out.update(range(offset // block, (end - 1) // block + 1))
    return sorted(out)


def block_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Pure: sorted block indices as runs of consecutive ones, (first, last) inclusive: one
    ranged GET each."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs

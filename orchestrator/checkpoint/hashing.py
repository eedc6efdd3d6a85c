"""Hash checkpoint files while they are written, so nothing is read back to hash it.

`SaveTarget` is what a strategy writes a checkpoint into: its folder for this rank, a DCP
storage writer whose streams compute each file's SHA-256, block hashes (checkpoint/blocks.py)
and size as bytes go out, and
`write_bytes` for small extra files (RNG state, the metric tail). Files a writer puts there
without going through it (DeepSpeed's own torch.save calls) are hashed afterwards by `files()`.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.checkpoint.blocks import BlockHasher, hash_file


class _HashingStream(io.RawIOBase):
    """A write-only file wrapper: every byte written also updates the file's hashes."""

    def __init__(self, raw) -> None:
        self.raw, self.hasher = raw, BlockHasher()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        self.hasher.update(view)
        return self.raw.write(view)

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def seekable(self) -> bool:
        return False


class Registry:
    """{path: manifest entry (bytes, sha256, block hashes)} of the files written through the
    target (thread-safe: DCP writes with several threads)."""

    def __init__(self) -> None:
        self._files: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def put(self, path: Path, entry: dict[str, Any]) -> None:
        with self._lock:
            self._files[str(path)] = entry

    def move(self, old: Path, new: Path) -> None:
        with self._lock:
            if str(old) in self._files:
                self._files[str(new)] = self._files.pop(str(old))

    def get(self, path: Path) -> dict[str, Any] | None:
        with self._lock:
            return self._files.get(str(path))

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return sorted(self._files.items())


def _hashing_filesystem(registry: Registry):
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path, mode: str) -> Iterator[Any]:
            if "w" not in mode:
                with super().create_stream(path, mode) as s:
                    yield s
                return
            with super().create_stream(path, mode) as s:
                h = _HashingStream(s)
                yield h
            registry.put(Path(path), h.hasher.entry())

        def rename(self, path, new_path) -> None:
            super().rename(path, new_path)
            registry.move(Path(path), Path(new_path))

    return HashingFileSystem()


class SaveTarget:
    """Where one rank writes its part of a checkpoint."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder, self.rank = folder, rank
        self.registry = Registry()

    def dcp_writer(self, thread_count: int = 1):
        """A DCP FileSystemWriter into `folder` that hashes every file it writes."""
        from torch.distributed.checkpoint import FileSystemWriter

        writer = FileSystemWriter(str(self.folder), thread_count=thread_count)
        writer.fs = _hashing_filesystem(self.registry)
        return writer

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.folder / name
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        h = BlockHasher()
        h.update(data)
        self.registry.put(path, h.entry())

    def written(self) -> dict[str, dict[str, Any]]:
        """{relative path: {bytes, sha256}} of the files written through this target (by this
        rank), for the ones still there with the size that was written."""
        out = {}
        for path, entry in self.registry.items():
            p = Path(path)
            if p.is_file() and p.stat().st_size == entry["bytes"]:
                out[str(p.relative_to(self.folder))] = entry
        return out

    def files(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """{relative path: {bytes, sha256}} of this rank's files: hashed while written, or now
        for files written around the target (only `names` when given)."""
        out = {}
        paths = (
            [self.folder / n for n in names]
            if names is not None
            else sorted(p for p in self.folder.rglob("*") if p.is_file())
        )
        for p in paths:
            got = self.registry.get(p)
            if got is None or got["bytes"] != p.stat().st_size:
                got = hash_file(p)
            out[str(p.relative_to(self.folder))] = got
        return out

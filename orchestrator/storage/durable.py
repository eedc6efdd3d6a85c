"""The durable store: where everything of a run that must outlive a node lives.

It is a folder (on one machine, or a shared filesystem every node mounts) or an `s3://` prefix;
both answer the same few calls, so the launcher and the workers never care which:

    store = open_durable("s3://bucket/prefix/vicuna/run-1")   # or "/mnt/shared/runs/vicuna/run-1"
    store.write_text("run.json", text)          # one writer per file; atomic replace
    store.read_text("run.json")                 # None when absent
    store.append_lines("timeline.jsonl", lines) # a stream: many appends, one reader at a time
    store.read_lines("timeline.jsonl")
    store.upload_dir(local_folder, "export")    # and download_dir, list, delete

A stream is a file on a folder store (appended in place) and, on S3 (which cannot append),
a series of part objects under `<name>.parts/`, each written whole and read back in order.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Protocol

from orchestrator.storage.s3 import S3, join_key, split_url
from orchestrator.tracking.redact import scrub
from orchestrator.urls import is_object_store, local_path

PARTS = ".parts"


class Durable(Protocol):
    url: str

    def child(self, rel: str) -> Durable: ...

    def read_text(self, rel: str) -> str | None: ...

    def write_text(self, rel: str, text: str) -> None: ...

    def append_lines(self, rel: str, lines: list[str]) -> None: ...

    def read_lines(self, rel: str) -> list[str]: ...

    def exists(self, rel: str) -> bool: ...

    def list(self, rel: str = "") -> list[str]: ...

    def upload_dir(self, local: Path, rel: str) -> None: ...

    def download_dir(self, rel: str, local: Path) -> None: ...

    def delete(self, rel: str) -> None: ...

    def local_path(self, rel: str = "") -> Path | None: ...


def _safe_rel(rel: str) -> str:
    """A relative name inside the store: no absolute paths, no `..`."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if rel.startswith("/") or any(p == ".." for p in parts):
        raise ValueError(f"{rel!r} is not a relative name inside the store")
    return "/".join(parts)


class FolderStore:
    """A folder: on this machine (a private cluster) or on a filesystem every node mounts."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._lock = threading.Lock()

    def _path(self, rel: str) -> Path:
        rel = _safe_rel(rel)
        return self.root / rel if rel else self.root

    def child(self, rel: str) -> FolderStore:
        return FolderStore(self._path(rel))

    def local_path(self, rel: str = "") -> Path:
        return self._path(rel)

    def read_text(self, rel: str) -> str | None:
        try:
            return self._path(rel).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, rel: str, text: str) -> None:
        text = scrub(text)  # nothing in the durable store carries a secret
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def append_lines(self, rel: str, lines: list[str]) -> None:
        if not lines:
            return
        lines = [scrub(line) for line in lines]
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, path.open("a") as f:
            f.write("".join(line.rstrip("\n") + "\n" for line in lines))
            f.flush()  # in the OS now: survives a SIGKILL of this process

    def read_lines(self, rel: str) -> list[str]:
        text = self.read_text(rel)
        return [x for x in text.splitlines() if x.strip()] if text else []

    def exists(self, rel: str) -> bool:
        return self._path(rel).exists()

    def list(self, rel: str = "") -> list[str]:
        base = self._path(rel)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def upload_dir(self, local: Path, rel: str) -> None:
        dest = self._path(rel)
        if dest.resolve() == Path(local).resolve():
            return
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)

    def download_dir(self, rel: str, local: Path) -> None:
        shutil.copytree(self._path(rel), local, dirs_exist_ok=True)

    def delete(self, rel: str) -> None:
        path = self._path(rel)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class S3Prefix:
    """Everything under s3://bucket/prefix/."""

    def __init__(self, url: str, s3: S3 | None = None) -> None:
        self.bucket, self.prefix = split_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.s3 = s3 or S3()
        self._seq = 0
        self._lock = threading.Lock()

    def _key(self, rel: str) -> str:
        return join_key(self.prefix, _safe_rel(rel))

    def child(self, rel: str) -> S3Prefix:
        return S3Prefix(f"s3://{self.bucket}/{self._key(rel)}", self.s3)

    def local_path(self, rel: str = "") -> None:
        return None

    def read_text(self, rel: str) -> str | None:
        data = self.s3.get_bytes(self.bucket, self._key(rel))
        return None if data is None else data.decode()

    def write_text(self, rel: str, text: str) -> None:
        self.s3.put_bytes(self.bucket, self._key(rel), scrub(text).encode())

    def append_lines(self, rel: str, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            self._seq += 1
            seq = self._seq
        # Sortable and unique across processes: time, then pid and a per-process sequence.
        name = f"{time.time_ns():020d}-{os.getpid():07d}-{seq:06d}.jsonl"
        body = "".join(scrub(line).rstrip("\n") + "\n" for line in lines).encode()
        self.s3.put_bytes(self.bucket, self._key(f"{rel}{PARTS}/{name}"), body)

    def read_lines(self, rel: str) -> list[str]:
        prefix = self._key(f"{rel}{PARTS}") + "/"
        out: list[str] = []
        for key in sorted(self.s3.list(self.bucket, prefix)):
            data = self.s3.get_bytes(self.bucket, key)
            if data:
                out += [x for x in data.decode().splitlines() if x.strip()]
        return out

    def exists(self, rel: str) -> bool:
        key = self._key(rel)
        return self.s3.head(self.bucket, key) is not None or bool(
            self.s3.list(self.bucket, key.rstrip("/") + "/")
        )

    def list(self, rel: str = "") -> list[str]:
        base = self._key(rel)
        prefix = base + "/" if base else ""
        return sorted(k[len(prefix) :] for k in self.s3.list(self.bucket, prefix))

    def put_file(self, rel: str, path: Path) -> None:
        self.s3.upload(Path(path), self.bucket, self._key(rel))

    def get_file(self, rel: str, dest: Path) -> None:
        self.s3.download(self.bucket, self._key(rel), Path(dest))

    def upload_dir(self, local: Path, rel: str) -> None:
        local = Path(local)
        stale = set(self.list(rel))
        for p in sorted(local.rglob("*")):
            if p.is_file():
                name = str(p.relative_to(local))
                self.s3.upload(p, self.bucket, self._key(f"{rel}/{name}"))
                stale.discard(name)
        if stale:
            self.s3.delete(self.bucket, [self._key(f"{rel}/{n}") for n in stale])

    def download_dir(self, rel: str, local: Path) -> None:
        for name in self.list(rel):
            self.s3.download(self.bucket, self._key(f"{rel}/{name}"), Path(local) / _safe_rel(name))

    def delete(self, rel: str) -> None:
        key = self._key(rel)
        keys = list(self.s3.list(self.bucket, key.rstrip("/") + "/"))
        keys += list(self.s3.list(self.bucket, f"{key}{PARTS}/"))
        if self.s3.head(self.bucket, key) is not None:
            keys.append(key)
        if keys:
            self.s3.delete(self.bucket, keys)


def is_s3(url: str) -> bool:
    """An s3:// location (orchestrator/urls.py parses every location)."""
    return is_object_store(str(url))


def open_durable(url: str | Path) -> FolderStore | S3Prefix:
    """`s3://bucket/prefix` -> S3Prefix; anything else is a folder."""
    return S3Prefix(str(url)) if is_s3(str(url)) else FolderStore(local_path(str(url)))

"""Prepared data in the durable store: keyed by what it was built from, built once, fetched by
one process per node and verified by hash.

The key is a hash of the data config and the source's identity (local files: path, size and
modification time; S3 objects: ETag; Hugging Face datasets: id, split, revision and, when the
dataset can be loaded, its fingerprint). A relaunch with changed data gets a new key and so never
reuses stale tokens; the launcher refuses to continue a run on changed data unless told to
(`data.rebuild=true`).

    url, manifest = ensure_data(cfg.data, root, workspace)   # launcher: build or reuse, publish
    data = fetch_data(url, node_cache, leader)                # worker: open (S3: fetch first)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.config.schema import DataConfig
from orchestrator.data.formats import DataError
from orchestrator.data.prepared import (
    FORMAT_VERSION,
    MANIFEST,
    BadPreparedData,
    DataManifest,
    PreparedData,
    open_prepared,
    read_manifest,
    verify,
)
from orchestrator.paths import REPO_ROOT
from orchestrator.storage.durable import FolderStore, S3Prefix, open_durable
from orchestrator.storage.layout import DATA
from orchestrator.urls import is_object_store

KEY_EXCLUDES = ("rebuild", "lengths")
"""Config keys that do not change the prepared tokens."""


def _file_identity(source: str) -> dict[str, Any]:
    """One data file: its S3 ETag, or a local file's path, size and SHA-256 (its content: a
    file rewritten in place with the same size and mtime is another file; local data files are
    small next to a training run, and hashing them costs well under a second per GB)."""
    if is_object_store(source):
        from orchestrator.storage.s3 import S3, split_url

        bucket, key = split_url(source)
        try:
            info = S3().head(bucket, key)
        except Exception as e:  # noqa: BLE001 - named in the error
            raise DataError(f"data.source={source!r}: cannot read the object ({e})") from None
        if info is None:
            raise DataError(f"data.source={source!r}: cannot read the object (not found)")
        return {"url": source, "etag": info.etag, "bytes": info.size}
    path = Path(source)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if path.exists():
        st = path.stat()
        # Relative to the project when it ships with it: the same key on every checkout.
        try:
            name = str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            name = str(path.resolve())
        from orchestrator.data.prepared import sha256_file

        return {"path": name, "bytes": st.st_size, "sha256": sha256_file(path)}
    return {"hf": source}


def _hf_identity(source: str, split: str, revision: str | None) -> dict[str, Any]:
    ident: dict[str, Any] = {"hf": source, "split": split, "revision": revision}
    try:  # the fingerprint of the cached dataset, when it can be loaded (no hub here)
        import datasets

        ident["fingerprint"] = datasets.load_dataset(
            source, split=split, revision=revision
        )._fingerprint
    except Exception:  # noqa: BLE001 - reading the rows will say what is wrong
        pass
    return ident


def source_identity(cfg: DataConfig) -> dict[str, Any]:
    """What the prepared tokens depend on besides the config."""
    if cfg.format == "text":
        from orchestrator.data.text import is_files, resolve_files

        if not is_files(cfg.source):
            return {"hf": cfg.source, "split": cfg.split, "revision": cfg.revision}
        out = []
        for f in resolve_files(cfg.source, cfg.exclude):
            ident = _file_identity(f.location)
            ident.pop("path", None)
            out.append({"name": f.name, **ident})
        return {"files": out}

    def one(source: str, split: str) -> dict[str, Any]:
        ident = _file_identity(source)
        return _hf_identity(source, split, cfg.revision) if list(ident) == ["hf"] else ident

    if cfg.format == "mixture":
        return {"sources": [one(s.source, s.split) for s in cfg.sources]}
    return one(cfg.source, cfg.split)


def data_key(cfg: DataConfig) -> tuple[str, dict[str, Any]]:
    """(key, identity): the key names the prepared folder `<root>/.data/<key>/`."""
    from orchestrator.training.bases import base_id, is_base

    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in KEY_EXCLUDES}
    identity = {"format_version": FORMAT_VERSION, "config": config, "source": source_identity(cfg)}
    if is_base(cfg.tokenizer):  # a local base's tokenizer: the base's own hash
        identity["tokenizer_base"] = base_id(cfg.tokenizer)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24], identity


def data_url(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{DATA}/{key}"


def ensure_data(cfg: DataConfig, root: str, workspace: Path) -> tuple[str, DataManifest]:
    """The prepared data of `cfg` in the durable store under `root`, built and published if it
    is not there yet. Returns (its URL, its manifest).

    Raises:
        DataError: bad rows (before any cluster starts).
    """
    key, identity = data_key(cfg)
    url = data_url(root, key)
    store = open_durable(url)
    found = _complete_manifest(store)
    if found is not None:
        return url, found
    workspace.mkdir(parents=True, exist_ok=True)
    tmp = workspace / f"{key}.{os.getpid()}.{time.time_ns()}"
    try:
        from orchestrator.data.dataset import build_prepared

        manifest = build_prepared(cfg, tmp, key, identity)
        _publish(tmp, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return url, manifest


def _complete_manifest(store: FolderStore | S3Prefix) -> DataManifest | None:
    text = store.read_text(MANIFEST)
    if text is None:
        return None
    try:
        manifest = DataManifest.from_json(text)
    except (json.JSONDecodeError, BadPreparedData):
        return None
    return manifest if manifest.format_version == FORMAT_VERSION else None


def _publish(folder: Path, store: FolderStore | S3Prefix) -> None:
    """Make a built folder durable; the manifest goes last, so a half-published folder is never
    taken for a complete one."""
    if isinstance(store, FolderStore):
        dest = store.local_path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (dest / MANIFEST).exists():
            return  # another launch published the same key first: same content
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(folder, dest)
        return
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            store.put_file(str(p.relative_to(folder)), p)
    store.write_text(MANIFEST, (folder / MANIFEST).read_text())


def fetch_data(url: str, node_cache: Path, leader: bool) -> PreparedData | None:
    """Worker side. A folder store is opened in place. From S3, the node's leader downloads the
    folder into `node_cache/<key>/` (verified by sha256, renamed into place when whole); the
    other ranks of the node call this again after a barrier with `leader=False`. Returns None
    for a non-leader whose copy is not there yet (the caller's barrier orders them).

    Raises:
        BadPreparedData: the published folder is incomplete or does not match its hashes.
    """
    store = open_durable(url)
    if isinstance(store, FolderStore):
        return open_prepared(store.local_path())
    key = url.rstrip("/").rsplit("/", 1)[-1]
    dest = node_cache / key
    if leader:
        with _locked(node_cache / f".{key}.lock"):  # two raylets on one disk fetch it once
            _fetch_copy(store, url, node_cache, key, dest)
    if not (dest / MANIFEST).exists():
        return None
    return open_prepared(dest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch_copy(store: S3Prefix, url: str, node_cache: Path, key: str, dest: Path) -> None:
    if not _valid_copy(dest):
        manifest = _complete_manifest(store)
        if manifest is None:
            raise BadPreparedData(f"{url}: no complete prepared data (no manifest.json)")
        tmp = node_cache / f".{key}.{os.getpid()}.{time.time_ns()}"
        try:
            for rel in manifest.files:
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise BadPreparedData(f"{url}: manifest lists {rel!r}, outside its folder")
            for rel in manifest.files:
                store.get_file(rel, tmp / rel)
            verify(tmp, manifest, hashes=True)
            (tmp / MANIFEST).write_text(manifest.to_json())
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _valid_copy(folder: Path) -> bool:
    try:
        verify(folder, read_manifest(folder), hashes=False)
        return True
    except BadPreparedData:
        return False

"""Content-addressed model folders: every export (a merged model, an adapter, a reward model)
and every local base carries `model_manifest.json`, the size and SHA-256 of each of its files.

    write_model_manifest(folder, kind="model", hashed={...})   # with the export, last
    manifest = verify_model_folder(folder)                     # before a stage or eval reads it
    model_digest(manifest)                                     # "sha256:<hex>": its identity

The digest is the SHA-256 of the canonical JSON of the file table, so two folders with the
same bytes have the same digest wherever they are (a folder, S3) and any changed byte changes
it. What uses it: a stage's identity includes its inputs' digests (launch/pipeline.py), a
checkpoint of a LoRA/adapter job names the digest of the frozen base it was trained on (a
resume on another base is refused), and the MLflow logged model is tagged with it.

Like a checkpoint manifest, a model manifest is untrusted input: its paths are checked to be
inside the folder before anything is read, files must be regular files (no symlinks), sizes are
checked before hashing, and with ORCHESTRATOR_CHECKPOINT_KEY set it is signed (HMAC) and an
unsigned or mis-signed one is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from orchestrator.checkpoint.manifest import (
    FILES_KEY,
    SIGNATURE_KEY,
    BadManifest,
    _write_atomic,
    safe_rel,
    sha256_file,
    sign,
    signing_key,
)

MODEL_MANIFEST = "model_manifest.json"
FORMAT = 1
KINDS = ("model", "adapter", "reward_model", "base")


class BadModel(BadManifest):
    """A model folder without a valid manifest, or whose files do not match it."""


def model_digest(manifest: dict[str, Any]) -> str:
    """The folder's identity: SHA-256 of its file table's canonical JSON."""
    body = json.dumps(manifest[FILES_KEY], sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def write_model_manifest(
    folder: Path,
    kind: str,
    hashed: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `folder/model_manifest.json` listing every file under `folder` (written last).
    `hashed`: {relative path: {bytes, sha256}} computed while the files were written (the
    sharded writer's); only the other files are read back to hash them."""
    if kind not in KINDS:
        raise ValueError(f"model manifest kind {kind!r}; valid: {list(KINDS)}")
    hashed = hashed or {}
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == MODEL_MANIFEST:
            continue
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        got = hashed.get(rel)
        if got is None or got["bytes"] != size:
            got = {"bytes": size, "sha256": sha256_file(p)}
        files[rel] = {"bytes": got["bytes"], "sha256": got["sha256"]}
    if not files:
        raise BadModel(f"{folder}: nothing to list (an empty model folder)")
    manifest = {"format": FORMAT, "kind": kind, FILES_KEY: files, "created": time.time()}
    manifest.update(extra or {})
    manifest = sign(manifest, signing_key())
    _write_atomic(folder / MODEL_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def parse_model_manifest(raw: str | bytes, where: str) -> dict[str, Any]:
    """A model manifest checked for shape, paths and (with a key) its signature, before any of
    the files it lists is touched. Raises BadModel naming what is wrong."""
    import hmac

    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadModel(f"{where}: unreadable {MODEL_MANIFEST} ({e})") from None
    if not isinstance(manifest, dict):
        raise BadModel(f"{where}: {MODEL_MANIFEST} is not a JSON object")
    key = signing_key()
    if key is not None:
        sig = manifest.get(SIGNATURE_KEY)
        body = {k: v for k, v in manifest.items() if k != SIGNATURE_KEY}
        good = sign(body, key)[SIGNATURE_KEY]
        if not isinstance(sig, str) or not hmac.compare_digest(sig, good):
            raise BadModel(
                f"{where}: {'unsigned' if sig is None else 'wrong signature'} "
                "(ORCHESTRATOR_CHECKPOINT_KEY is set: only signed model manifests are used)"
            )
    files = manifest.get(FILES_KEY)
    if not isinstance(files, dict) or not files:
        raise BadModel(f"{where}: no files listed")
    for rel, meta in files.items():
        try:
            safe_rel(rel, where)
        except BadManifest as e:
            raise BadModel(str(e)) from None
        if rel == MODEL_MANIFEST or not isinstance(meta, dict):
            raise BadModel(f"{where}: entry {rel!r} is not a file entry")
        n, digest = meta.get("bytes"), meta.get("sha256")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise BadModel(f"{where}: entry {rel!r} has no valid size")
        if not isinstance(digest, str) or len(digest) != 64:
            raise BadModel(f"{where}: entry {rel!r} has no valid sha256")
    return manifest


def read_model_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, parsed (None when it has none)."""
    path = folder / MODEL_MANIFEST
    if not path.exists():
        return None
    if path.is_symlink() or not path.is_file():
        raise BadModel(f"{path}: not a regular file")
    return parse_model_manifest(path.read_bytes(), str(path))


def verify_model_folder(folder: Path, expect_digest: str | None = None) -> dict[str, Any]:
    """Check every file of `folder` against its manifest (sizes first, then SHA-256), and the
    digest against `expect_digest` when given. Files not in the manifest are refused too (a
    swapped-in shard next to the listed ones would be loaded by an index that names it).

    Raises:
        BadModel: naming the folder, the file and the mismatch.
    """
    manifest = read_model_manifest(folder)
    if manifest is None:
        raise BadModel(
            f"{folder}: no {MODEL_MANIFEST} (not an export of this orchestrator, or its export "
            "never finished)"
        )
    if expect_digest is not None and model_digest(manifest) != expect_digest:
        raise BadModel(
            f"{folder}: its manifest has digest {model_digest(manifest)}, the one recorded when "
            f"it was made is {expect_digest} (the folder was replaced)"
        )
    root = os.path.realpath(folder)
    listed = set(manifest[FILES_KEY])
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            raise BadModel(f"{folder}: {rel} is a symbolic link")
        if p.is_file() and p.name != MODEL_MANIFEST and rel not in listed:
            raise BadModel(f"{folder}: {rel} is not listed in its {MODEL_MANIFEST}")
    for rel, meta in manifest[FILES_KEY].items():
        f = folder / rel
        if os.path.commonpath([root, os.path.realpath(f)]) != root:
            raise BadModel(f"{folder}: {rel} resolves outside the folder")
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            raise BadModel(f"{folder}: {rel} is listed in its manifest but missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadModel(f"{folder}: {rel} is not a regular file")
        if st.st_size != meta["bytes"]:
            raise BadModel(
                f"{folder}: {rel} has {st.st_size} bytes, its manifest says {meta['bytes']}"
            )
        if sha256_file(f) != meta["sha256"]:
            raise BadModel(f"{folder}: {rel} does not match its sha256 (changed or corrupted)")
    return manifest

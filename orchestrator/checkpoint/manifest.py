"""Checkpoint folders and their manifest: the single source of truth for "latest complete".

A checkpoint is written into `.tmp-step_XXXXXXXX/`; when every rank has finished, rank 0 writes
`manifest.json` (training state plus the size and sha256 of every file) atomically, and only then
renames the folder to `step_XXXXXXXX/`. A folder without a valid manifest, or whose files do not
match it (truncated, corrupted, missing), is never loaded: `latest_complete` skips it with a
warning naming it. This holds however the writer died (SIGKILL, preemption, full disk).

A manifest is also untrusted input (whoever can write the checkpoint prefix writes it):
`parse_manifest` checks its shape and every listed path (relative, normalised, inside the
checkpoint folder) before any file is touched; files must be regular files (no symlinks, no
devices) of the listed size before they are hashed. Checkpoint shards are pickles (DCP's
`.metadata`, DeepSpeed's files), so with ORCHESTRATOR_CHECKPOINT_KEY set every manifest is signed
(HMAC-SHA256 over its canonical JSON, which lists each file's sha256) and an unsigned or
mis-signed one is refused before anything in it is read. Without a key, the checkpoint prefix
must be as trusted as the code (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.checkpoint.blocks import check_entry

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STEP_KEY = "step"
FILES_KEY = "files"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
SIGNATURE_KEY = "signature"
KEY_ENV = "ORCHESTRATOR_CHECKPOINT_KEY"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BadManifest(ValueError):
    """A manifest that is malformed, lists a path outside its folder, or is not signed right."""


def signing_key() -> bytes | None:
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(manifest: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """The manifest with its HMAC-SHA256 signature (unchanged without a key)."""
    if not key:
        return manifest
    return {
        **manifest,
        SIGNATURE_KEY: hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest(),
    }


def safe_rel(rel: Any, where: str) -> str:
    """A listed file name: relative, normalised, inside the checkpoint folder."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise BadManifest(f"{where}: file name {rel!r} is not a relative path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise BadManifest(f"{where}: file {rel!r} is outside the checkpoint folder")
    if pure.name == MANIFEST:
        raise BadManifest(f"{where}: lists {MANIFEST} itself")
    return str(pure)


def parse_manifest(
    raw: str | bytes, where: str, step: int | None = None, key: bytes | None = None
) -> dict[str, Any]:
    """A manifest checked for shape, paths and (with a key) its signature, before any of the
    files it lists is touched.

    Raises:
        BadManifest: naming what is wrong.
    """
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadManifest(f"{where}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise BadManifest(
            f"{where}: the manifest is a JSON {type(manifest).__name__}, not an object"
        )
    if key is not None:
        sig = manifest.get(SIGNATURE_KEY)
        good = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
        if not isinstance(sig, str) or not hmac.compare_digest(sig, good):
            raise BadManifest(
                f"{where}: {'unsigned' if sig is None else 'wrong signature'} "
                f"({KEY_ENV} is set: only manifests signed with it are loaded)"
            )
    s = manifest.get(STEP_KEY)
    if not isinstance(s, int) or isinstance(s, bool) or s < 0:
        raise BadManifest(f"{where}: step {s!r} is not a step number")
    if step is not None and s != step:
        raise BadManifest(f"{where}: says step {s}, its folder is step {step}")
    files = manifest.get(FILES_KEY)
    if not isinstance(files, dict) or not files:
        raise BadManifest(f"{where}: no files listed (a checkpoint without shards)")
    for rel, meta in files.items():
        safe_rel(rel, where)
        if not isinstance(meta, dict):
            raise BadManifest(f"{where}: entry {rel!r} is not an object")
        n, digest = meta.get("bytes"), meta.get("sha256")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise BadManifest(f"{where}: entry {rel!r} has no valid size (bytes={n!r})")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise BadManifest(f"{where}: entry {rel!r} has no valid sha256")
        if problem := check_entry(meta):
            raise BadManifest(f"{where}: entry {rel!r}: {problem}")
    return manifest


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dirname(step: int) -> str:
    return f".tmp-{step_dirname(step)}"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(tmp_dir: Path, final_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` into `tmp_dir` (last, atomically; signed when a key is set), then rename
    it to `final_dir`."""
    manifest = sign(manifest, signing_key())
    _write_atomic(tmp_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    if final_dir.exists():  # a stale copy of the same step (e.g. redone after a crash)
        trash = final_dir.with_name(f".trash-{final_dir.name}-{time.time_ns()}")
        os.replace(final_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp_dir, final_dir)


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256, block hashes}} of every file under `folder` but the
    manifest."""
    from orchestrator.checkpoint.blocks import hash_file

    return {
        str(p.relative_to(folder)): hash_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def commit(tmp_dir: Path, final_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Manifest of the files in `tmp_dir` + `state`, written last; then publish as `final_dir`."""
    manifest = {**state, FILES_KEY: file_hashes(tmp_dir), "committed_at": time.time()}
    publish(tmp_dir, final_dir, manifest)
    return manifest


def read_manifest(ckpt_dir: Path, verify_hashes: bool = True) -> dict[str, Any]:
    """The manifest of a complete checkpoint. Raises ValueError (BadManifest) saying what is
    wrong otherwise. Nothing outside `ckpt_dir` is read; sizes are checked before hashing."""
    if ckpt_dir.is_symlink():  # another run's checkpoint, or anything else, linked in
        raise BadManifest(f"{ckpt_dir}: a symlink, not a checkpoint folder of this run")
    path = ckpt_dir / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise BadManifest(f"{ckpt_dir}: no {MANIFEST} (the save never finished)")
    m = _STEP_DIR.match(ckpt_dir.name)
    manifest = parse_manifest(
        path.read_bytes(), str(path), int(m.group(1)) if m else None, signing_key()
    )
    root = os.path.realpath(ckpt_dir)
    for rel, meta in manifest[FILES_KEY].items():
        f = ckpt_dir / rel
        real = os.path.realpath(f)
        if os.path.commonpath([root, real]) != root:
            raise BadManifest(f"{ckpt_dir}: file {rel} resolves outside the checkpoint folder")
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            raise BadManifest(f"{ckpt_dir}: file {rel} listed in the manifest is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadManifest(f"{ckpt_dir}: file {rel} is not a regular file")
        if st.st_size != meta["bytes"]:
            raise BadManifest(
                f"{ckpt_dir}: file {rel} has {st.st_size} bytes, manifest says {meta['bytes']}"
            )
        if verify_hashes and sha256_file(f) != meta["sha256"]:
            raise BadManifest(f"{ckpt_dir}: file {rel} does not match its sha256 (corrupted)")
    return manifest


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every published checkpoint folder, newest first (complete or not)."""
    if not root.exists():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():  # a linked folder is not this run's
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def latest_complete(root: Path, verify_hashes: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose manifest verifies; broken ones are skipped with a warning."""
    for _, ckpt in list_checkpoints(root):
        try:
            return ckpt, read_manifest(ckpt, verify_hashes)
        except ValueError as e:
            log.warning("skipping incomplete checkpoint: %s", e)
    return None

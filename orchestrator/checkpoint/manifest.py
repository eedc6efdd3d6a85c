"""Checkpoint folders and their manifest: the single source of truth for "latest complete".

A checkpoint is written into `.tmp-step_XXXXXXXX/`; when every rank has finished, rank 0 writes
`manifest.json` (training state plus the size and sha256 of every file) atomically, and only then
renames the folder to `step_XXXXXXXX/`. A folder without a valid manifest, or whose files do not
match it (truncated, corrupted, missing), is never loaded: `latest_complete` skips it with a
warning naming it. This holds however the writer died (SIGKILL, preemption, full disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STEP_KEY = "step"
FILES_KEY = "files"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


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
    """Write `manifest` into `tmp_dir` (last, atomically), then rename it to `final_dir`."""
    _write_atomic(tmp_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    if final_dir.exists():  # a stale copy of the same step (e.g. redone after a crash)
        trash = final_dir.with_name(f".trash-{final_dir.name}-{time.time_ns()}")
        os.replace(final_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp_dir, final_dir)


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under `folder` but the manifest."""
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def commit(tmp_dir: Path, final_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Manifest of the files in `tmp_dir` + `state`, written last; then publish as `final_dir`."""
    manifest = {**state, FILES_KEY: file_hashes(tmp_dir), "committed_at": time.time()}
    publish(tmp_dir, final_dir, manifest)
    return manifest


def read_manifest(ckpt_dir: Path, verify_hashes: bool = True) -> dict[str, Any]:
    """The manifest of a complete checkpoint. Raises ValueError saying what is wrong otherwise."""
    path = ckpt_dir / MANIFEST
    if not path.exists():
        raise ValueError(f"{ckpt_dir}: no {MANIFEST} (the save never finished)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable manifest ({e.msg})") from None
    for rel, meta in manifest.get(FILES_KEY, {}).items():
        f = ckpt_dir / rel
        if not f.exists():
            raise ValueError(f"{ckpt_dir}: file {rel} listed in the manifest is missing")
        if f.stat().st_size != meta["bytes"]:
            raise ValueError(
                f"{ckpt_dir}: file {rel} has {f.stat().st_size} bytes, manifest says {meta['bytes']}"
            )
        if verify_hashes and sha256_file(f) != meta["sha256"]:
            raise ValueError(f"{ckpt_dir}: file {rel} does not match its sha256 (corrupted)")
    return manifest


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every published checkpoint folder, newest first (complete or not)."""
    if not root.exists():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
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

"""Where complete checkpoints live: a local (or shared) folder, or S3.

Every rank first writes its shards into a local staging folder. A store then makes them durable
in three moves, and only the last one makes a checkpoint visible as complete:

1. `put_files`: each node's leader uploads the files its node wrote (S3: multipart, retried with
   backoff) and returns their sizes and sha256 (its "part").
2. the parts of all nodes are gathered on rank 0;
3. `commit`: rank 0 writes `manifest.json` (training state + every file's size and sha256) LAST.

A checkpoint without a manifest, or whose files do not match it, is never loaded: `complete_steps`
only lists checkpoints with a manifest, and `fetch` verifies every file before anything is loaded
(a mismatch raises `IncompleteCheckpoint`, and the caller moves on to the next older one).

Local layout is `root/step_XXXXXXXX/` (staged in `root/.tmp-step_XXXXXXXX/`, published by rename);
S3 layout is `s3://bucket/prefix/step_XXXXXXXX/...` with the manifest uploaded last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from orchestrator.checkpoint.manifest import (
    _STEP_DIR,
    FILES_KEY,
    MANIFEST,
    BadManifest,
    _write_atomic,
    list_checkpoints,
    parse_manifest,
    publish,
    read_manifest,
    sign,
    signing_key,
    step_dirname,
    tmp_dirname,
)
from orchestrator.storage.s3 import S3, join_key, split_url
from orchestrator.urls import is_object_store, local_path

log = logging.getLogger(__name__)


class IncompleteCheckpoint(ValueError):
    """A checkpoint that is missing its manifest or whose files do not match it."""


def keep_steps(steps: list[int], keep_last: int, keep_every: int | None) -> set[int]:
    """Which complete checkpoints retention keeps: the newest `keep_last`, plus every step that is
    a multiple of `keep_every` (milestones), if set."""
    newest = sorted(steps, reverse=True)[:keep_last]
    milestones = {s for s in steps if keep_every and s % keep_every == 0}
    return set(newest) | milestones


class LocalStore:
    """Checkpoints in a folder on this machine (or a shared filesystem every node mounts)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def staging_dir(self, step: int, base: Path) -> Path:
        return self.root / tmp_dirname(step)  # staged next to where it is published

    def put_files(self, staging: Path, step: int, files: dict[str, dict[str, Any]]) -> None:
        pass  # the files are already where they stay

    def commit(self, step: int, staging: Path, manifest: dict[str, Any]) -> None:
        """Write the manifest (last, atomically) and publish the folder."""
        publish(staging, self.root / step_dirname(step), manifest)

    def discard_staging(self, staging: Path) -> None:
        pass  # committed by rename; a failed save's folder is cleaned by prune

    def complete_steps(self) -> list[int]:
        """Steps that have a manifest, newest first (their files are verified by `fetch`)."""
        return [s for s, p in list_checkpoints(self.root) if (p / MANIFEST).exists()]

    def read_manifest(self, step: int) -> dict[str, Any]:
        try:
            return read_manifest(self.root / step_dirname(step), verify_hashes=False)
        except ValueError as e:
            raise IncompleteCheckpoint(str(e)) from None

    def fetch(self, step: int, cache: Path) -> Path:
        """The verified local folder of a complete checkpoint (here: in place)."""
        folder = self.root / step_dirname(step)
        try:
            read_manifest(folder, verify_hashes=True)
        except ValueError as e:
            raise IncompleteCheckpoint(str(e)) from None
        return folder

    def prune(self, keep_last: int, keep_every: int | None, newest_committed: int) -> list[int]:
        """Delete complete checkpoints retention does not keep, and leftovers of failed saves
        older than the newest committed step (never a save that may still be in progress)."""
        complete = self.complete_steps()
        keep = keep_steps(complete, keep_last, keep_every)
        removed = []
        for step, folder in list_checkpoints(self.root):
            if (step in complete and step not in keep) or (
                step not in complete and step < newest_committed
            ):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(step)
        for p in self.root.glob(".t*-step_*"):
            m = p.name.split("step_")[-1][:8]
            if p.name.startswith(".trash-") or (m.isdigit() and int(m) < newest_committed):
                shutil.rmtree(p, ignore_errors=True)
        return removed


class S3Store:
    """Checkpoints under `s3://bucket/prefix/`, through the project's one S3 client
    (`orchestrator.storage.s3`: retries with backoff; endpoint, region and credentials from the
    usual AWS environment, so the same job runs against AWS, MinIO or a local moto_server)."""

    def __init__(self, url: str, s3: S3 | None = None) -> None:
        self.bucket, self.prefix = split_url(url)
        self.url = url.rstrip("/")
        self.s3 = s3 or S3()

    def _key(self, step: int, rel: str = "") -> str:
        return join_key(self.prefix, step_dirname(step), rel)

    def _list(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under `prefix`."""
        return {k: o.size for k, o in self.s3.list(self.bucket, prefix).items()}

    # ------------------------------------------------------------------ store API
    def staging_dir(self, step: int, base: Path) -> Path:
        return base / tmp_dirname(step)

    def put_files(self, staging: Path, step: int, files: dict[str, dict[str, Any]]) -> None:
        """Upload one rank's files (already hashed) into the checkpoint's prefix."""
        for rel in sorted(files):
            self.s3.upload(staging / rel, self.bucket, self._key(step, rel))

    def commit(self, step: int, staging: Path, manifest: dict[str, Any]) -> None:
        """Upload the manifest last: only now is the checkpoint complete."""
        listed = self._list(self._key(step) + "/")
        for rel, meta in manifest[FILES_KEY].items():
            if listed.get(self._key(step, rel)) != meta["bytes"]:
                raise IncompleteCheckpoint(
                    f"{self.url}/{step_dirname(step)}/{rel} is missing or has the wrong size"
                )
        manifest = sign(manifest, signing_key())
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self.s3.put_bytes(self.bucket, self._key(step, MANIFEST), body)

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        parent = staging.parent  # the step's folder, once its last rank is done
        with contextlib.suppress(OSError):
            parent.rmdir()

    def complete_steps(self) -> list[int]:
        """Steps with a manifest, newest first. Anything else under the prefix is ignored."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        steps = []
        for key in self._list(prefix):
            rest = key[len(prefix) :].split("/")
            m = _STEP_DIR.match(rest[0]) if len(rest) == 2 and rest[1] == MANIFEST else None
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps, reverse=True)

    def read_manifest(self, step: int) -> dict[str, Any]:
        where = f"{self.url}/{step_dirname(step)}/{MANIFEST}"
        try:
            body = self.s3.get_bytes(self.bucket, self._key(step, MANIFEST))
            if body is None:
                raise FileNotFoundError("no manifest.json")
            return parse_manifest(body, where, step, signing_key())
        except BadManifest as e:
            raise IncompleteCheckpoint(str(e)) from None
        except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            raise IncompleteCheckpoint(f"{where}: {e}") from None

    def fetch(self, step: int, cache: Path) -> Path:
        """Download a complete checkpoint into `cache/step_X/` and verify every file. The
        manifest is checked (shape, paths inside the folder, signature) before anything is
        downloaded, each object's size before its bytes, and a failed fetch leaves nothing."""
        manifest = self.read_manifest(step)
        folder = cache / step_dirname(step)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            listed = self._list(self._key(step) + "/")
            for rel, meta in manifest[FILES_KEY].items():
                if listed.get(self._key(step, rel)) != meta["bytes"]:
                    raise IncompleteCheckpoint(
                        f"{self.url}/{step_dirname(step)}/{rel} is missing or has the wrong size"
                    )
            for rel in manifest[FILES_KEY]:
                try:
                    self.s3.download(self.bucket, self._key(step, rel), folder / rel)
                except Exception as e:  # noqa: BLE001
                    raise IncompleteCheckpoint(
                        f"{self.url}/{step_dirname(step)}/{rel}: {e}"
                    ) from None
            _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            try:
                read_manifest(folder, verify_hashes=True)
            except ValueError as e:
                raise IncompleteCheckpoint(
                    str(e).replace(str(folder), f"{self.url}/{folder.name}")
                ) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a failed fetch leaves nothing behind
            raise
        return folder

    def prune(self, keep_last: int, keep_every: int | None, newest_committed: int) -> list[int]:
        complete = self.complete_steps()
        keep = keep_steps(complete, keep_last, keep_every)
        prefix = f"{self.prefix}/" if self.prefix else ""
        by_step: dict[int, list[str]] = {}
        for key in self._list(prefix):
            head = key[len(prefix) :].split("/")[0]
            if head.startswith("step_") and head[5:].isdigit():
                by_step.setdefault(int(head[5:]), []).append(key)
        removed = []
        for step, keys in sorted(by_step.items()):
            drop = (step in complete and step not in keep) or (
                step not in complete and step < newest_committed
            )
            if not drop:
                continue
            # Manifest first: from that moment the checkpoint is not "complete" any more.
            manifest_key = self._key(step, MANIFEST)
            if manifest_key in keys:
                self.s3.delete(self.bucket, [manifest_key])
                keys.remove(manifest_key)
            if keys:
                self.s3.delete(self.bucket, keys)
            removed.append(step)
        return removed


def open_store(url: str) -> LocalStore | S3Store:
    """`s3://bucket/prefix` -> S3Store; anything else is a local (or shared) folder."""
    return S3Store(url) if is_object_store(url) else LocalStore(local_path(url))

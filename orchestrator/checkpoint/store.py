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

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.checkpoint.manifest import (
    FILES_KEY,
    MANIFEST,
    _write_atomic,
    file_hashes,
    list_checkpoints,
    publish,
    read_manifest,
    step_dirname,
    tmp_dirname,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def put_files(self, staging: Path, step: int) -> dict[str, dict[str, Any]]:
        return file_hashes(staging)  # the files are already where they stay

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
    """Checkpoints under `s3://bucket/prefix/`. Endpoint, region and credentials come from the
    usual AWS environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, profiles, IAM roles),
    so the same job runs against AWS, MinIO or a local moto_server."""

    MULTIPART_BYTES = 8 * 1024 * 1024

    def __init__(
        self,
        url: str,
        attempts: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not url.startswith("s3://") or len(url) <= 5:
            raise ValueError(f"not an s3:// URL: {url!r}")
        self.url = url.rstrip("/")
        bucket, _, prefix = url[5:].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self.client = boto3.client(
            "s3",
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    # ------------------------------------------------------------------ helpers
    def _key(self, step: int, rel: str = "") -> str:
        parts = [self.prefix, step_dirname(step), rel]
        return "/".join(p for p in parts if p)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient errors with exponential backoff and jitter. botocore
        retries each request a little; this covers longer outages (seconds to a minute)."""
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status and status < 500 and code not in ("SlowDown", "RequestTimeout"):
                    raise  # 403, 404, NoSuchBucket: retrying cannot help
                err: Exception = e
            except (BotoCoreError, OSError) as e:
                err = e
            if attempt == self.attempts:
                raise err
            log.warning("S3 %s failed (%s); retry %d in %.1f s", what, err, attempt, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _list(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under `prefix`."""
        out: dict[str, int] = {}
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._retry(f"list {prefix}", lambda kw=kw: self.client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    # ------------------------------------------------------------------ store API
    def staging_dir(self, step: int, base: Path) -> Path:
        return base / tmp_dirname(step)

    def put_files(self, staging: Path, step: int) -> dict[str, dict[str, Any]]:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(
            multipart_threshold=self.MULTIPART_BYTES, multipart_chunksize=self.MULTIPART_BYTES
        )
        # Hash while uploading (hashlib and the socket writes both release the GIL).
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing = pool.submit(file_hashes, staging)
            rels = sorted(
                str(p.relative_to(staging))
                for p in staging.rglob("*")
                if p.is_file() and p.name != MANIFEST
            )
            for rel in rels:
                key = self._key(step, rel)
                self._retry(
                    f"upload {key}",
                    lambda rel=rel, key=key: self.client.upload_file(
                        str(staging / rel), self.bucket, key, Config=cfg
                    ),
                )
            part = hashing.result()
        assert sorted(part) == rels, "staging changed while it was uploaded"
        return part

    def commit(self, step: int, staging: Path, manifest: dict[str, Any]) -> None:
        """Upload the manifest last: only now is the checkpoint complete."""
        listed = self._list(self._key(step) + "/")
        for rel, meta in manifest[FILES_KEY].items():
            if listed.get(self._key(step, rel)) != meta["bytes"]:
                raise IncompleteCheckpoint(
                    f"{self.url}/{step_dirname(step)}/{rel} is missing or has the wrong size"
                )
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self._retry(
            f"commit {step_dirname(step)}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(step, MANIFEST), Body=body
            ),
        )

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def complete_steps(self) -> list[int]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        steps = []
        for key in self._list(prefix):
            rest = key[len(prefix) :].split("/")
            if len(rest) == 2 and rest[1] == MANIFEST and rest[0].startswith("step_"):
                steps.append(int(rest[0][5:]))
        return sorted(steps, reverse=True)

    def read_manifest(self, step: int) -> dict[str, Any]:
        try:
            obj = self._retry(
                "read manifest",
                lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(step, MANIFEST)),
            )
            return json.loads(obj["Body"].read())
        except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
            raise IncompleteCheckpoint(f"{self.url}/{step_dirname(step)}: {e}") from None

    def fetch(self, step: int, cache: Path) -> Path:
        """Download a complete checkpoint into `cache/step_X/` and verify every file."""
        manifest = self.read_manifest(step)
        folder = cache / step_dirname(step)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for rel in manifest[FILES_KEY]:
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            key = self._key(step, rel)
            try:
                self._retry(
                    f"download {key}",
                    lambda key=key, dest=dest: self.client.download_file(
                        self.bucket, key, str(dest)
                    ),
                )
            except Exception as e:  # noqa: BLE001
                raise IncompleteCheckpoint(f"{self.url}/{step_dirname(step)}/{rel}: {e}") from None
        _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        try:
            read_manifest(folder, verify_hashes=True)
        except ValueError as e:
            raise IncompleteCheckpoint(
                str(e).replace(str(folder), f"{self.url}/{folder.name}")
            ) from None
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
                self._retry(
                    "prune",
                    lambda k=manifest_key: self.client.delete_object(Bucket=self.bucket, Key=k),
                )
                keys.remove(manifest_key)
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                self._retry(
                    "prune",
                    lambda batch=batch: self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch}
                    ),
                )
            removed.append(step)
        return removed


def open_store(url: str) -> LocalStore | S3Store:
    """`s3://bucket/prefix` -> S3Store; anything else is a local (or shared) folder."""
    return S3Store(url) if url.startswith("s3://") else LocalStore(url)

"""S3 in one place: the client, retries with backoff, and the few calls everything else uses
(list, head, get, put, upload, download, delete). The checkpoint store, the durable run store and
the data sources all go through `S3`.

Endpoint, region and credentials come from the usual AWS environment (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID, profiles, instance roles), so the same code runs against AWS,
MinIO or a local moto_server.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

MULTIPART_BYTES = 8 * 1024 * 1024


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix").

    Raises:
        ValueError: not an s3:// URL with a bucket.
    """
    if not url.startswith("s3://") or len(url.rstrip("/")) <= 5:
        raise ValueError(f"not an s3:// URL: {url!r} (expected s3://bucket[/prefix])")
    bucket, _, key = url[5:].partition("/")
    return bucket, key.strip("/")


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass
class ObjectInfo:
    size: int
    etag: str


class S3:
    """A boto3 client with our retry policy: transient errors (5xx, SlowDown, timeouts,
    connection resets) are retried with exponential backoff and jitter for up to a minute or so;
    client errors (403, 404, NoSuchBucket) are raised at once."""

    def __init__(self, attempts: int = 8, backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )
        return self._client

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient errors. botocore retries each request a little; this
        covers longer outages (seconds to a minute)."""
        from botocore.exceptions import BotoCoreError, ClientError

        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ClientError as e:
                if not is_transient(e):
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

    # ------------------------------------------------------------------ calls
    def list(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        """{key: size and ETag} of every object under `prefix`."""
        out: dict[str, ObjectInfo] = {}
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.retry(
                f"list s3://{bucket}/{prefix}", lambda kw=kw: self.client.list_objects_v2(**kw)
            )
            for obj in page.get("Contents", []):
                out[obj["Key"]] = ObjectInfo(obj["Size"], obj.get("ETag", "").strip('"'))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """Size and ETag of an object, or None when there is none."""
        try:
            h = self.retry(
                f"head s3://{bucket}/{key}",
                lambda: self.client.head_object(Bucket=bucket, Key=key),
            )
        except Exception as e:  # noqa: BLE001
            if _status(e) == 404:
                return None
            raise
        return ObjectInfo(h["ContentLength"], h["ETag"].strip('"'))

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        try:
            obj = self.retry(
                f"get s3://{bucket}/{key}",
                lambda: self.client.get_object(Bucket=bucket, Key=key),
            )
        except Exception as e:  # noqa: BLE001
            if _status(e) == 404:
                return None
            raise
        return obj["Body"].read()

    def get_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (one ranged GET, retried). Raises when the object
        returns another number of bytes."""

        def get() -> bytes:
            obj = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            data = obj["Body"].read()
            if len(data) != end - start:
                raise OSError(f"got {len(data)} bytes of s3://{bucket}/{key}[{start}:{end}]")
            return data

        return self.retry(f"get s3://{bucket}/{key} bytes {start}-{end - 1}", get)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.retry(
            f"put s3://{bucket}/{key}",
            lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data),
        )

    def upload(self, path: Path, bucket: str, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES
        )
        self.retry(
            f"upload s3://{bucket}/{key}",
            lambda: self.client.upload_file(str(path), bucket, key, Config=cfg),
        )

    def download(self, bucket: str, key: str, dest: Path) -> None:
        """Download to `dest` (written as a unique .part file, renamed when complete, so two
        processes fetching the same object never see half a file)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{time.time_ns()}.part")
        try:
            self.retry(
                f"download s3://{bucket}/{key}",
                lambda: self.client.download_file(bucket, key, str(tmp)),
            )
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)

    def fetch_cached(self, url: str, cache_root: Path) -> Path:
        """An s3:// object downloaded once into `cache_root/<bucket>/<key>.<etag><suffix>`: a
        changed object (new ETag) is fetched again, an unchanged one never.

        Raises:
            FileNotFoundError: no such object. S3 errors propagate after the retries.
        """
        bucket, key = split_url(url)
        head = self.head(bucket, key)
        if head is None:
            raise FileNotFoundError(url)
        etag = head.etag.replace("-", "_")
        local = cache_root / bucket / f"{key}.{etag}{Path(key).suffix}"
        if not local.exists():
            self.download(bucket, key, local)
        return local

    def delete(self, bucket: str, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.retry(
                f"delete {len(batch)} objects in s3://{bucket}",
                lambda batch=batch: self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": batch}
                ),
            )


def _status(e: Exception) -> int:
    resp = getattr(e, "response", None) or {}
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = resp.get("Error", {}).get("Code", "")
    if code in ("404", "NoSuchKey", "NotFound"):
        return 404
    return int(status or 0)


def is_transient(e: Exception) -> bool:
    """A ClientError worth retrying: a 5xx, or S3's throttling / timeout codes."""
    resp = getattr(e, "response", None) or {}
    code = resp.get("Error", {}).get("Code", "")
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return not (status and status < 500 and code not in ("SlowDown", "RequestTimeout"))

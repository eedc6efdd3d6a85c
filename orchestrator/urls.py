"""Storage locations, parsed in one place (a leaf module: any package may import it).

A location is a URL with a scheme or a path:
- `s3://bucket/prefix`: S3 or an S3-compatible store (endpoint from AWS_ENDPOINT_URL);
- `file:///abs/path`, or a plain path: a folder (local, or a shared file system);
- `gs://`: recognised, not supported yet: a clear error, and the place to add it (a scheme
  here, a store class behind the durable-store protocol in storage/durable.py).
Everything else that looks like `scheme://` is refused, naming the valid schemes. A model
reference that is neither (a Hugging Face hub id, `base:NAME`) is a path to this module: code
that reads models checks for a folder itself.
"""

from __future__ import annotations

import re

from orchestrator.errors import ConfigError

SCHEMES = {"s3": "S3 or an S3-compatible store", "file": "a folder"}
NOT_YET = {"gs": "Google Cloud Storage"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(url: str, key: str = "location") -> str:
    """`s3` or `file` (a path has no scheme: a folder).

    Raises:
        ConfigError: a scheme this project cannot store to, naming `key` and the valid ones.
    """
    m = _SCHEME.match(str(url))
    if m is None:
        return "file"
    name = m.group(1).lower()
    if name in SCHEMES:
        return name
    if name in NOT_YET:
        raise ConfigError(
            f"{key}={url!r}: {NOT_YET[name]} ({name}://) is not supported yet; use s3:// (or "
            "an S3-compatible endpoint) or a folder"
        )
    raise ConfigError(
        f"{key}={url!r}: unknown scheme {name}://; use s3://bucket/prefix, file:///path or a path"
    )


def is_object_store(url: str | None) -> bool:
    """An object store (s3://) rather than a folder; False for None and for any path."""
    if not url:
        return False
    try:
        return scheme(str(url)) == "s3"
    except ConfigError:
        return False


def local_path(url: str) -> str:
    """The folder of a `file://` URL or a path (unchanged)."""
    s = str(url)
    return s[len("file://") :] if s.lower().startswith("file://") else s

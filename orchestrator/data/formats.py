"""Row formats -> conversations: a list of (role, text) turns with role "user" or "assistant".

Bad rows raise `DataError` naming the file, the row (JSONL line number or JSON list index, plus its
id) and the field, or are skipped and counted when the job sets `data.on_error: skip`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.paths import REPO_ROOT
from orchestrator.urls import is_object_store

Turn = tuple[str, str]  # (role, text), role in {"user", "assistant"}

# FastChat maps ShareGPT speakers to roles like this (other speakers are bad rows).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
}


class DataError(ValueError):
    """A data row is bad. The message names the file, the row and the field."""


@dataclass
class Row:
    data: Any
    where: str
    """Human-readable position, e.g. 'data/x.jsonl line 17 (id=abc)'."""


FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


def read_rows(
    source: str, split: str = "train", max_rows: int | None = None, data_dir: str | None = None
) -> Iterator[Row | DataError]:
    """Rows of a local .json (list) / .jsonl / .parquet file, an s3:// object of those kinds
    (fetched once into ~/.cache/orchestrator/s3, with the S3 store's retries), or a Hugging
    Face dataset id (`datasets.load_dataset`, the full-scale path)."""
    if is_object_store(source):
        if not source.endswith(FILE_SUFFIXES):
            raise DataError(f"data.source={source!r}: an s3:// source must end in {FILE_SUFFIXES}")
        yield from _read_file(fetch_s3_source(source), max_rows, shown=source)
        return
    path = Path(source)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # shipped samples are named relative to the repo root
    if path.suffix in FILE_SUFFIXES:
        if not path.exists():
            raise DataError(f"data.source={source!r}: file not found")
        yield from _read_file(path, max_rows)
        return
    if source.startswith("/") or source.startswith("."):
        raise DataError(f"data.source={source!r}: not a {'/'.join(FILE_SUFFIXES)} file")
    import datasets  # the full-scale path: a Hugging Face dataset id

    ds = datasets.load_dataset(source, split=split, data_dir=data_dir)
    for i, item in enumerate(ds):
        if max_rows is not None and i >= max_rows:
            return
        yield Row(item, f"{source}[{split}] index {i}")


def fetch_s3_source(url: str) -> Path:
    """An s3:// data object in this node's cache (fetched again only when its ETag changes):
    $ORCHESTRATOR_CACHE, else the node's scratch. Errors name the source."""
    import os

    from orchestrator.storage.layout import S3_CACHE, default_scratch
    from orchestrator.storage.s3 import S3

    cache_root = Path(os.environ.get("ORCHESTRATOR_CACHE") or default_scratch()) / S3_CACHE
    try:
        return S3().fetch_cached(url, cache_root)
    except FileNotFoundError:
        raise DataError(f"data.source={url!r}: cannot read the object (not found)") from None
    except Exception as e:  # noqa: BLE001 - named in the error
        raise DataError(f"data.source={url!r}: cannot read the object ({e})") from None


def _read_file(
    path: Path, max_rows: int | None, shown: str | None = None
) -> Iterator[Row | DataError]:
    """Rows of one file, and a DataError in place of each unreadable JSONL line; `shown` is how
    errors name it (the s3:// URL of a fetched copy)."""
    if shown is not None:
        try:
            for row in _read_file(path, max_rows):
                if isinstance(row, DataError):
                    yield DataError(str(row).replace(str(path), shown))
                else:
                    yield Row(row.data, row.where.replace(str(path), shown, 1))
        except DataError as e:
            raise DataError(str(e).replace(str(path), shown)) from None
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for item in batch.to_pylist():
                if max_rows is not None and i >= max_rows:
                    return
                yield Row(item, f"{path} row {i}")
                i += 1
        return
    if path.suffix == ".jsonl":
        with path.open() as f:
            for lineno, line in enumerate(f, start=1):
                if max_rows is not None and lineno > max_rows:
                    return
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    # A bad line is a bad row: yielded, so `data.on_error=skip` skips and counts
                    # it like any other (the reader keeps going).
                    yield DataError(
                        f"{path} line {lineno} column {e.colno}: not valid JSON: {e.msg}"
                    )
                    continue
                yield Row(data, f"{path} line {lineno}")
        return
    text = path.read_text()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        ends = " (the file ends inside it: truncated?)" if cut else ""
        raise DataError(
            f"{path} line {e.lineno} column {e.colno}: not valid JSON: {e.msg}{ends}"
        ) from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(items).__name__}")
    for i, item in enumerate(items[:max_rows] if max_rows is not None else items):
        yield Row(item, f"{path} row {i}")


def sharegpt_turns(row: Row) -> list[Turn]:
    """ShareGPT {"id", "conversations": [{"from", "value"}]} -> alternating user/assistant turns.

    As FastChat did: a leading non-human turn is dropped; the conversation must then alternate
    user/assistant and end on an assistant turn (a trailing user turn has nothing to learn and is
    dropped).
    """
    data = row.data
    rid = data.get("id") if isinstance(data, dict) else None
    where = f"{row.where}" + (f" (id={rid})" if rid is not None else "")
    if not isinstance(data, dict) or "conversations" not in data:
        raise DataError(f"{where}: missing field 'conversations'")
    conv = data["conversations"]
    if not isinstance(conv, list):
        raise DataError(f"{where}: field 'conversations' must be a list")
    turns: list[Turn] = []
    for j, msg in enumerate(conv):
        if not isinstance(msg, dict) or "from" not in msg or "value" not in msg:
            raise DataError(f"{where}: conversations[{j}] needs fields 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(msg["from"]).lower())
        if role is None:
            raise DataError(
                f"{where}: conversations[{j}].from={msg['from']!r}; valid: {sorted(SHAREGPT_ROLES)}"
            )
        if not isinstance(msg["value"], str):
            raise DataError(f"{where}: conversations[{j}].value must be a string")
        turns.append((role, msg["value"]))
    if turns and turns[0][0] != "user":
        turns = turns[1:]
    if turns and turns[-1][0] == "user":
        turns = turns[:-1]
    if not turns:
        raise DataError(f"{where}: empty conversation (no user/assistant round)")
    for j, (role, _) in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(f"{where}: roles must alternate user/assistant; turn {j} is {role}")
    return turns

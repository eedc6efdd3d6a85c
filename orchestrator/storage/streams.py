"""Appending records to a durable stream from a training worker without slowing it down."""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.storage.durable import FolderStore
from orchestrator.storage.layout import to_line

log = logging.getLogger(__name__)


class RecordStream:
    """Records appended to `name` in a durable store. On a folder store every append goes
    straight to the file (cheap, and visible at once); on S3, lines are buffered and written as
    one part object by `flush()`, which the loop calls at every checkpoint and at the end, and
    which `append` calls itself once `flush_s` has passed since the last one. A failed flush keeps
    the lines for the next one (training never waits on storage)."""

    def __init__(self, store: Any, name: str, flush_s: float = 10.0) -> None:
        self.store, self.name, self.flush_s = store, name, flush_s
        self.immediate = isinstance(store, FolderStore)
        self._buf: list[str] = []
        self._last = time.monotonic()

    def append(self, record: Any) -> None:
        self._buf.append(record if isinstance(record, str) else to_line(record))
        if self.immediate or time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        lines, self._buf = self._buf, []
        try:
            self.store.append_lines(self.name, lines)
        except Exception as e:  # noqa: BLE001 - keep them for the next flush
            self._buf = lines + self._buf
            log.warning("could not write %d lines to %s/%s yet: %s", len(lines), self.store.url,
                        self.name, e)  # fmt: skip
        self._last = time.monotonic()

"""Metric logging that never blocks training and never drops a metric.

MLflow's own client blocks for minutes when the server is down (7 retries, backoff 2, timeout
120 s) and its async mode drops data (docs/facts/stack.md, MLflow). So the training loop only
appends: every metric goes first to a journal in the node's scratch (`mlflow_pending.jsonl`, one
line per metric, flushed to the OS at once) and to an in-memory queue; a background thread sends
the queue in order with `log_batch` and records in `mlflow_pending.sent` how many journal lines
MLflow has. When everything is sent and the logger closes, both files go.

What is not sent yet must survive the node too, not only the process: the unsent rows are
committed with every checkpoint (`unsent()`, replayed by the worker group that resumes from it)
and, when the server is still down at the end, handed back by `close()` for the durable store,
where the launcher replays them. A dead process's journal on a surviving node is replayed by the
next logger on that node. Replays are safe to repeat: MLflow drops exact duplicates (same key,
step, timestamp and value). Only rank 0 logs (torchtune `metric_logging.py`, nanochat `print0`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from orchestrator.tracking.runs import client

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's log_batch limit for metrics


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """For ranks other than 0."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _client(tracking_uri: str):
    """Fails fast (runs.HTTP_TIMEOUT_S) instead of MLflow's minutes of retries: our own thread
    retries."""
    return client(tracking_uri)


def _sent_path(journal: Path) -> Path:
    return journal.with_suffix(".sent")


def _read_sent(journal: Path) -> int:
    try:
        return int(_sent_path(journal).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_sent(journal: Path, n: int) -> None:
    tmp = _sent_path(journal).with_suffix(".sent.tmp")
    tmp.write_text(str(n))
    tmp.replace(_sent_path(journal))


class BufferedMlflowLogger:
    """Journal + queue + sender thread. `skip_through_step` drops steps an earlier attempt
    already logged (so a resumed run logs no step twice)."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        spill_path: Path,
        skip_through_step: int = 0,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.journal = Path(spill_path)
        self.skip_through_step = skip_through_step
        self.flush_interval_s = flush_interval_s
        replay_all(tracking_uri, self.journal.parent, self.journal.stem)  # left by a dead process
        if self.journal.exists():  # could not be sent yet: set it aside, start a fresh journal
            aside = self.journal.with_name(f"{self.journal.stem}.{time.time_ns()}.jsonl")
            self.journal.replace(aside)
            if _sent_path(self.journal).exists():
                _sent_path(self.journal).replace(_sent_path(aside))
        self._sent = 0
        self._journal_f = open(self.journal, "a")  # noqa: SIM115 - open for the logger's life
        self._queue: deque[tuple[str, float, int, int]] = deque()  # key, value, ms, step
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.skip_through_step:
            return
        now_ms = int(time.time() * 1000)
        rows = [(k, float(v), now_ms, step) for k, v in metrics.items()]
        with self._lock:
            for k, v, ts, s in rows:
                self._journal_f.write(
                    json.dumps(
                        {"run_id": self.run_id, "key": k, "value": v, "timestamp": ts, "step": s}
                    )
                    + "\n"
                )
            self._journal_f.flush()  # in the OS now: survives a SIGKILL of this process
            self._queue.extend(rows)

    def _send_some(self) -> bool:
        """Send up to one batch. True when the queue is empty afterwards."""
        from mlflow.entities import Metric

        with self._lock:
            batch = [self._queue[i] for i in range(min(MAX_BATCH, len(self._queue)))]
        if not batch:
            return True
        try:
            _client(self.tracking_uri).log_batch(
                self.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in batch]
            )
        except Exception as e:  # noqa: BLE001 - any failure: keep the data, retry later
            self._failures += 1
            if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                log.warning(
                    "MLflow unreachable (%d failures, %d metrics buffered): %s",
                    self._failures,
                    len(self._queue),
                    str(e).splitlines()[0][:200],
                )
            return False
        with self._lock:
            for _ in batch:
                self._queue.popleft()
            empty = not self._queue
            self._sent += len(batch)
            _write_sent(self.journal, self._sent)
        if self._failures:
            log.warning("MLflow reachable again; buffered metrics are being sent")
            self._failures = 0
        return empty

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._send_some() is False and not self._stop.is_set():
                if self._failures:
                    self._stop.wait(min(10.0, self.flush_interval_s * 2 ** min(self._failures, 4)))
            self._stop.wait(self.flush_interval_s)

    def unsent(self) -> list[dict]:
        """The metrics not sent yet, as journal rows (a snapshot)."""
        with self._lock:
            rows = list(self._queue)
        return [
            {"run_id": self.run_id, "key": k, "value": v, "timestamp": ts, "step": s}
            for k, v, ts, s in rows
        ]

    def close(self, timeout_s: float = 15.0) -> list[dict]:
        """Send what is left (up to `timeout_s`). Returns the rows that could not be sent (also
        kept in the journal)."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        deadline = time.time() + timeout_s
        while self._queue and time.time() < deadline:
            if not self._send_some():
                time.sleep(0.5)
        self._journal_f.close()
        left = self.unsent()
        if left:
            log.warning(
                "MLflow still unreachable: %d metrics kept in %s (sent at the next launch)",
                len(left),
                self.journal,
            )
        else:
            self.journal.unlink(missing_ok=True)
            _sent_path(self.journal).unlink(missing_ok=True)
        return left


def replay_spill(tracking_uri: str, spill_path: Path) -> int:
    """Send the journal lines MLflow does not have yet; the files go once all are sent."""
    spill_path = Path(spill_path)
    if not spill_path.exists():
        return 0
    from mlflow.entities import Metric

    sent = _read_sent(spill_path)
    rows = []
    for line in spill_path.read_text().splitlines()[sent:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a process killed mid-write
    client = _client(tracking_uri)
    for i in range(0, len(rows), MAX_BATCH):
        chunk = rows[i : i + MAX_BATCH]
        client.log_batch(
            chunk[0]["run_id"],
            metrics=[Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk],
        )
        _write_sent(spill_path, sent + i + len(chunk))
    spill_path.unlink()
    _sent_path(spill_path).unlink(missing_ok=True)
    return len(rows)


def replay_rows(tracking_uri: str, rows: list[dict]) -> int:
    """Send journal rows (their own run ids and timestamps). Returns how many were sent."""
    if not rows:
        return 0
    from mlflow.entities import Metric

    client = _client(tracking_uri)
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    for run_id, mine in by_run.items():
        for i in range(0, len(mine), MAX_BATCH):
            chunk = mine[i : i + MAX_BATCH]
            client.log_batch(
                run_id,
                metrics=[Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk],
            )
    return len(rows)


def replay_durable(tracking_uri: str, store, name: str) -> int:
    """Replay the rows a worker left in the durable store (`name`, a stream), then remove them.
    Failures are logged and the rows kept for the next try."""
    rows = []
    for line in store.read_lines(name):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        return 0
    try:
        sent = replay_rows(tracking_uri, rows)
    except Exception as e:  # noqa: BLE001 - still unreachable: keep them for later
        log.warning("could not replay %s/%s yet: %s", store.url, name, str(e).splitlines()[0][:160])
        return 0
    store.delete(name)
    return sent


def replay_all(tracking_uri: str, folder: Path, stem: str = "mlflow_pending") -> int:
    """Replay every journal in `folder` (the current one and any set aside); failures are logged
    and the journals kept for the next try. Returns how many metrics were sent."""
    total = 0
    for journal in sorted(Path(folder).glob(f"{stem}*.jsonl")):
        try:
            total += replay_spill(tracking_uri, journal)
        except Exception as e:  # noqa: BLE001 - still unreachable: keep it for later
            log.warning("could not replay %s yet: %s", journal, str(e).splitlines()[0][:160])
    return total

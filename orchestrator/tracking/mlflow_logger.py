"""Metric logging that never blocks training and never drops a metric.

MLflow's own client blocks for minutes when the server is down (7 retries, backoff 2, timeout
120 s) and its async mode drops data (see shared/STACK.md). So the training loop only appends to
an in-memory queue; a background thread sends batches with `log_batch`, keeps what failed and
retries in order; on close, whatever could not be sent is spilled to a JSONL file that
`replay_spill` sends later (the launcher does it at the end of the run and at the next launch).
Only rank 0 logs (torchtune `metric_logging.py`, nanochat `print0`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

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
    # Fail fast instead of MLflow's minutes of retries: our own thread retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


class BufferedMlflowLogger:
    """Queue + sender thread. `skip_through_step` drops steps an earlier attempt already logged."""

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
        self.spill_path = Path(spill_path)
        self.skip_through_step = skip_through_step
        self.flush_interval_s = flush_interval_s
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
        with self._lock:
            self._queue.extend((k, float(v), now_ms, step) for k, v in metrics.items())

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
        if self._failures:
            log.warning("MLflow reachable again; buffered metrics are being sent")
            self._failures = 0
        return empty

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._send_some() is False and not self._stop.is_set():
                if self._failures:
                    self._stop.wait(min(30.0, self.flush_interval_s * 2 ** min(self._failures, 5)))
            self._stop.wait(self.flush_interval_s)

    def close(self, timeout_s: float = 15.0) -> None:
        """Send what is left (up to `timeout_s`), then spill the rest to disk."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        deadline = time.time() + timeout_s
        while self._queue and time.time() < deadline:
            if not self._send_some():
                time.sleep(0.5)
        if self._queue:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spill_path.open("a") as f:
                for k, v, ts, s in self._queue:
                    f.write(
                        json.dumps(
                            {
                                "run_id": self.run_id,
                                "key": k,
                                "value": v,
                                "timestamp": ts,
                                "step": s,
                            }
                        )
                        + "\n"
                    )
            log.warning(
                "MLflow still unreachable: %d metrics saved to %s (replayed at the next launch)",
                len(self._queue),
                self.spill_path,
            )
            self._queue.clear()


def replay_spill(tracking_uri: str, spill_path: Path) -> int:
    """Send metrics a logger spilled to disk; the file is removed once all are sent."""
    spill_path = Path(spill_path)
    if not spill_path.exists():
        return 0
    from mlflow.entities import Metric

    rows = [json.loads(line) for line in spill_path.read_text().splitlines() if line.strip()]
    client = _client(tracking_uri)
    for i in range(0, len(rows), MAX_BATCH):
        chunk = rows[i : i + MAX_BATCH]
        client.log_batch(
            chunk[0]["run_id"],
            metrics=[Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk],
        )
    spill_path.unlink()
    return len(rows)

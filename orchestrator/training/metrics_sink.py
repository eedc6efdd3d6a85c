"""The metrics sink, one part of the trainer: where rank 0's metrics go, and how none is lost.

Metrics are buffered and sent to MLflow in the background (`BufferedMlflowLogger`, spilling to a
journal on the node while MLflow is down). What MLflow has not received when a checkpoint is
taken is committed with it (`tail_bytes`), so it reaches MLflow even if the node is gone; a
resumed run replays journals a dead process left on this node and the checkpoint's tail, then
logs only the steps MLflow does not have (`open`). What is still unsent at the end is left in
the run's durable folder for the launcher (`close`). Replays are idempotent: MLflow drops exact
duplicates (same key, step, time and value).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.storage.layout import METRICS_JOURNAL, METRICS_PENDING, METRICS_TAIL
from orchestrator.tracking.mlflow_logger import (
    BufferedMlflowLogger,
    MetricLogger,
    NullLogger,
    replay_all,
    replay_rows,
)


class MetricsSink:
    def __init__(
        self, tracking_uri: str, run_id: str, node_dir: Callable[[], Path], run_store: Any,
        say: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.node_dir, self.run_store, self.say = node_dir, run_store, say
        """node_dir: this run's folder in the node's scratch (made when first asked for)."""
        self.logger: MetricLogger = NullLogger()
        """Until `open` (and on ranks other than 0): nothing is logged."""
        self.tail_rows: list[dict[str, Any]] = []

    def read_tail(self, checkpoint: Path) -> None:
        """The metrics MLflow may not have got before the checkpoint we resume from was saved."""
        tail = checkpoint / METRICS_TAIL
        if tail.exists():
            self.tail_rows = [json.loads(x) for x in tail.read_text().splitlines() if x.strip()]

    def open(self, resumed_step: int) -> None:
        """Replay what earlier processes left, then log from the step after MLflow's last."""
        replay_all(self.tracking_uri, self.node_dir())
        try:
            replay_rows(self.tracking_uri, self.tail_rows)
        except Exception as e:  # noqa: BLE001 - MLflow down: the launcher replays at the end
            self.say(f"warning: could not replay the checkpoint's metric tail yet: {e}")
            self.run_store.append_lines(METRICS_PENDING, [json.dumps(r) for r in self.tail_rows])
        self.logger = BufferedMlflowLogger(
            self.tracking_uri,
            self.run_id,
            spill_path=self.node_dir() / METRICS_JOURNAL,
            skip_through_step=self.last_logged_step(resumed_step),
        )

    def last_logged_step(self, fallback: int) -> int:
        """The last step MLflow already has (so a resumed run logs no step twice)."""
        try:
            from mlflow.tracking import MlflowClient

            hist = MlflowClient(self.tracking_uri).get_metric_history(self.run_id, "loss")
            return max((m.step for m in hist), default=0)
        except Exception:  # noqa: BLE001 - MLflow down: may re-log steps after the checkpoint
            return fallback

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log(metrics, step=step)

    def tail_bytes(self) -> bytes | None:
        """What MLflow has not received yet, to commit with a checkpoint (None: nothing)."""
        if not isinstance(self.logger, BufferedMlflowLogger):
            return None
        rows = self.logger.unsent()
        return "".join(json.dumps(r) + "\n" for r in rows).encode() if rows else None

    def close(self) -> None:
        """Send what is left; what MLflow still refuses goes to the run's durable folder."""
        if isinstance(self.logger, BufferedMlflowLogger):
            left = self.logger.close()
            if left:  # MLflow still down: leave them where the launcher (anywhere) finds them
                self.run_store.append_lines(METRICS_PENDING, [json.dumps(r) for r in left])

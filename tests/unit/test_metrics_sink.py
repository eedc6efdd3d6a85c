"""The trainer's metrics sink (training/metrics_sink.py) against a real MLflow store (sqlite),
without a model or a cluster: the checkpoint's tail is replayed on resume, a resumed run logs
no step MLflow already has, and what MLflow never got is left for the launcher."""

from __future__ import annotations

import json
import time

from mlflow.tracking import MlflowClient

from orchestrator.storage.durable import FolderStore
from orchestrator.storage.layout import METRICS_PENDING, METRICS_TAIL
from orchestrator.training.metrics_sink import MetricsSink


def _run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    return uri, client, client.create_run(exp).info.run_id


def test_a_resumed_run_replays_the_tail_and_logs_only_new_steps(tmp_path):
    uri, client, run_id = _run(tmp_path)
    store = FolderStore(tmp_path / "run")
    node = tmp_path / "node"
    node.mkdir()
    first = MetricsSink(uri, run_id, lambda: node, store)
    first.open(resumed_step=0)
    for step in (1, 2, 3):
        first.log({"loss": 1.0 / step}, step)
    first.close()
    # a checkpoint at step 4 carried a metric MLflow never got (its node died before sending)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    row = {"run_id": run_id, "key": "loss", "value": 0.2, "timestamp": int(time.time() * 1000),
           "step": 4}  # fmt: skip
    (ckpt / METRICS_TAIL).write_text(json.dumps(row) + "\n")
    second = MetricsSink(uri, run_id, lambda: node, store)
    second.read_tail(ckpt)
    second.open(resumed_step=4)
    second.log({"loss": 9.9}, 4)  # already there (the tail): not logged twice
    second.log({"loss": 0.1}, 5)
    second.close()
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert hist == [(1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 0.2), (5, 0.1)]


def test_what_mlflow_never_gets_is_left_for_the_launcher(tmp_path):
    store = FolderStore(tmp_path / "run")
    node = tmp_path / "node"
    node.mkdir()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    row = {"run_id": "r", "key": "loss", "value": 0.2, "timestamp": 1, "step": 4}
    (ckpt / METRICS_TAIL).write_text(json.dumps(row) + "\n")
    said: list[str] = []
    sink = MetricsSink("http://127.0.0.1:9", "r", lambda: node, store, say=said.append)
    sink.read_tail(ckpt)
    sink.open(resumed_step=4)
    assert "could not replay" in said[0]
    pending = [json.loads(x) for x in store.read_text(METRICS_PENDING).splitlines()]
    assert pending == [row]
    assert sink.tail_bytes() is None  # nothing logged yet: nothing to commit with a checkpoint

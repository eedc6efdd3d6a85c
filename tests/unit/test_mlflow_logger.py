"""The buffered logger against a real MLflow store (sqlite) and an unreachable server."""

import time

from mlflow.tracking import MlflowClient

from orchestrator.launch.ray_session import free_port
from orchestrator.tracking.mlflow_logger import BufferedMlflowLogger, replay_spill


def new_run(uri):
    c = MlflowClient(uri)
    exp = c.create_experiment(f"t{time.time_ns()}")
    return c, c.create_run(exp).info.run_id


def test_logs_in_batches_and_skips_already_logged_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c, run_id = new_run(uri)
    lg = BufferedMlflowLogger(uri, run_id, tmp_path / "spill.jsonl", skip_through_step=2)
    for step in range(1, 6):
        lg.log({"loss": 10.0 - step, "cost/usd_total": 0.1 * step}, step=step)
    lg.close()
    hist = c.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in hist) == [3, 4, 5]
    assert not (tmp_path / "spill.jsonl").exists()


def test_unreachable_server_never_blocks_and_spills_then_replays(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spill = tmp_path / "spill.jsonl"
    lg = BufferedMlflowLogger(dead, "0" * 32, spill, flush_interval_s=0.05)
    t0 = time.perf_counter()
    for step in range(1, 101):
        lg.log({"loss": float(step)}, step=step)
    assert time.perf_counter() - t0 < 0.5  # logging is an append, whatever the server does
    lg.close(timeout_s=1.0)
    assert len(spill.read_text().splitlines()) == 100

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c, run_id = new_run(uri)
    spill.write_text(spill.read_text().replace("0" * 32, run_id))
    assert replay_spill(uri, spill) == 100
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss")) == list(range(1, 101))
    assert not spill.exists()


def test_a_killed_logger_loses_nothing_and_replay_sends_only_the_unsent_tail(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c, run_id = new_run(uri)
    journal = tmp_path / "mlflow_pending.jsonl"
    lg = BufferedMlflowLogger(uri, run_id, journal, flush_interval_s=0.05)
    for step in range(1, 6):
        lg.log({"loss": float(step)}, step=step)
    sent = tmp_path / "mlflow_pending.sent"
    deadline = time.time() + 10
    while not (sent.exists() and sent.read_text().strip() == "5"):
        assert time.time() < deadline, "the first five were never sent"
        time.sleep(0.05)
    lg.tracking_uri = f"http://127.0.0.1:{free_port()}"  # the server goes away ...
    for step in range(6, 11):
        lg.log({"loss": float(step)}, step=step)
    lg._stop.set()  # ... and the process is killed: no close(), nothing spilled at exit
    assert len(journal.read_text().splitlines()) == 10  # every metric is on disk anyway

    assert replay_spill(uri, journal) == 5  # only the unsent tail goes
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss")) == list(range(1, 11))
    assert not journal.exists()

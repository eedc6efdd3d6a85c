"""Chaos: a local run whose training workers are killed with SIGKILL at random steps and sent
SIGTERM (a spot notice). It must finish with the same parameters and the same per-step losses
as an uninterrupted run, in one MLflow run with one value per step. `make test` sends one SIGTERM
over 8 steps (SIGKILL resumes are in test_recipes.py and test_rl_stages.py); three SIGKILLs and
a SIGTERM over 24 steps is `slow`.

Set CHAOS_SEED to replay a schedule; the seed in use is in every assertion message."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.checkpoint.store import open_store
from orchestrator.storage.layout import read_failures
from tests.faults import Chaos, rows_after

pytestmark = pytest.mark.integration


def overrides(steps: int) -> list[str]:
    return [
        f"train.max_steps={steps}",
        "checkpoint.every_steps=4",
        "checkpoint.keep_last=3",
        "checkpoint.notice_poll_s=0.2",
    ]


def exported_state(run_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(Path(run_dir) / "export").state_dict()


def losses(run_dir: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rows_after(Path(run_dir) / "events.jsonl", 0)]


@pytest.mark.parametrize(
    "kills, steps",
    [(0, 8), pytest.param(3, 24, marks=pytest.mark.slow)],  # (~1.5 min and ~3 min here)
    ids=["sigterm", "3-sigkills-sigterm"],
)
def test_interruptions_change_nothing_but_the_bill(kills, steps, launch_workdir):
    from orchestrator.launch.run import launch

    over = overrides(steps)
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    sigs = [signal.SIGKILL] * kills + [signal.SIGTERM]
    rng.shuffle(sigs)
    plan = [(s, rng.randint(2, 6)) for s in sigs]
    why = f"CHAOS_SEED={seed} plan={[(s.name, n) for s, n in plan]}"

    base = launch("vicuna", "local", over, run_name="baseline")
    assert base.stop_reason == "completed" and base.step == steps

    chaos = Chaos(launch_workdir / "runs" / "vicuna" / "chaos", plan)
    chaos.start()
    try:
        res = launch("vicuna", "local", over, run_name="chaos")
    finally:
        chaos.done.set()
        chaos.join(timeout=30)
    why += f" log={chaos.log}"
    assert chaos.error is None, f"{why}: {chaos.error!r}"
    assert len(chaos.log) == len(sigs), why
    assert res.stop_reason == "completed" and res.step == steps, why

    failures = read_failures(Path(res.run_dir))
    assert [f.kind for f in failures] == ["preemption"] * len(sigs), (why, failures)
    notice = [f for f, s in zip(failures, sigs) if s == signal.SIGTERM][0]
    assert "spot notice" in notice.detail, (why, notice)

    # Same parameters as the uninterrupted run (CPU, fp32: deterministic resume).
    got, want = exported_state(res.run_dir), exported_state(base.run_dir)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=f"{why}: {k}")

    # One MLflow run, one value per step, and it is the uninterrupted run's value.
    client = MlflowClient(res.tracking_uri)
    exp = client.get_experiment_by_name("vicuna")
    runs = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'chaos'")
    assert [r.info.run_id for r in runs] == [res.mlflow_run_id], why
    history = client.get_metric_history(res.mlflow_run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1)), why
    baseline_loss = dict(losses(base.run_dir))
    for m in history:
        assert m.value == pytest.approx(baseline_loss[m.step], abs=1e-6), (why, m.step)
    preempt = client.get_metric_history(res.mlflow_run_id, "preemptions")
    assert max(preempt, key=lambda m: m.step).value == len(sigs), why
    # The steps redone are what the interruptions cost, and the run says so.
    redone = len(losses(res.run_dir)) - steps
    lost = client.get_metric_history(res.mlflow_run_id, "lost_steps")
    assert max(lost, key=lambda m: m.step).value == redone, why
    if kills:  # a SIGKILL loses the steps since the last checkpoint, and the bill pays them
        assert res.usd_total > base.usd_total, why
    else:  # the notice saved every step done: nothing is redone
        assert redone == 0, why
    # Every checkpoint left behind verifies.
    store = open_store(res.checkpoint_dir)
    for step in store.complete_steps():
        store.fetch(step, launch_workdir / "verify")

"""The eval objective's spec: its checks, its price (generation and the judge's tokens, no
checkpoint or export), the launcher's early key check, and its turn-2 prompt."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.errors import ConfigError

EVAL = ["train.objective=eval", "train.strategy=ddp", "model.pretrained=some/model"]


def test_eval_trains_nothing_and_generates_on_every_worker():
    with pytest.raises(ConfigError, match="train.strategy must be ddp"):
        compose("vicuna", "local", ["train.objective=eval", "model.pretrained=x"])
    with pytest.raises(ConfigError, match="train.method must be full"):
        compose("alpaca_lora", "local", [*EVAL, "model.load_8bit=false"])
    with pytest.raises(ConfigError, match="eval.judge.url"):
        compose("vicuna", "local", [*EVAL, "eval.judge.url=ftp://judge"])


def test_the_estimate_prices_generation_and_the_judge_not_checkpoints():
    from orchestrator.cost.estimator import project

    priced = ["eval.judge.usd_per_1m_input_tokens=2.5", "eval.judge.usd_per_1m_output_tokens=10"]
    p = project(compose("vicuna", "full", [*EVAL, *priced]))
    # 80 questions x 2 turns x (900 x $2.5 + 250 x $10) per million tokens
    assert p.usd_extra["judge_api"] == pytest.approx(160 * (900 * 2.5 + 250 * 10) / 1e6)
    assert p.usd_extra["storage"] == 0.0 and p.overhead_hours["checkpoints"] == 0.0
    assert p.assumptions["steps"] == 1 and p.compute_hours > 0  # the decode of the answers
    longer = project(compose("vicuna", "full", [*EVAL, *priced, "eval.max_new_tokens=2048"]))
    assert longer.compute_hours == pytest.approx(2 * p.compute_hours, rel=0.2)


def test_a_missing_judge_key_fails_before_anything_is_spent(monkeypatch, tmp_path):
    from orchestrator.evaluation.stage import before_run

    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    cfg = compose("vicuna", "local", [*EVAL, "eval.judge.api_key_env=NO_SUCH_JUDGE_KEY"])
    with pytest.raises(ConfigError, match="NO_SUCH_JUDGE_KEY.*not set"):
        before_run(cfg, storage=None)


def test_turn_two_is_prompted_after_the_first_exchange():
    from orchestrator.evaluation.objective import turn_prompt
    from orchestrator.evaluation.questions import Question

    q = Question(1, "math", ("What is 2+2?", "And times 3?"))
    first = turn_prompt("vicuna_v1.1", q, 1, [])
    second = turn_prompt("vicuna_v1.1", q, 2, ["4"])
    assert first.endswith("USER: What is 2+2? ASSISTANT:")
    assert second.startswith(first + " 4\n") and second.endswith("USER: And times 3? ASSISTANT:")


def test_the_readme_mt_bench_column_quotes_the_facts():
    """Every published MT-bench score in the README's recipe table is in docs/facts/mt_bench.md
    (with its source), and no recipe claims a score of its own before a full run is evaluated."""
    import re

    from orchestrator.paths import REPO_ROOT

    facts = (REPO_ROOT / "docs" / "facts" / "mt_bench.md").read_text()
    rows = [ln for ln in (REPO_ROOT / "README.md").read_text().splitlines()
            if ln.startswith("| `") and ln.count("|") == 8]  # fmt: skip
    assert len(rows) == 16
    quoted = 0
    for row in rows:
        cell = row.split("|")[-2].strip()
        published, _, ours = cell.partition(" / ")
        for score in re.findall(r"\d+\.\d\d", published):
            assert f"| {score} |" in facts or f"({score})" in facts, (row[:30], score)
            quoted += 1
            job = row.split("`")[1]
            if not published.startswith("<"):  # the job's replay block carries the same number
                assert compose(job, "full").replay.published_mt_bench == float(score), job
        assert ours in ("-", ""), row[:30]  # ours: only from an evaluated full run
    assert quoted == 7


def test_make_eval_evaluates_a_runs_export_or_a_model(tmp_path):
    from orchestrator.evaluation.command import eval_launch_args
    from orchestrator.make_args import make_argv

    env = {"ORCH_job": "vicuna", "ORCH_run": "r1", "ORCH_set": "eval.questions=sample"}
    assert make_argv("eval", env) == ["eval", "vicuna", "--run", "r1", "--set",
                                      "eval.questions=sample"]  # fmt: skip
    root = [f"storage.root={tmp_path}"]
    with pytest.raises(ConfigError, match="run=<a run of the job> or model="):
        eval_launch_args("vicuna", "local", None, None, root)
    with pytest.raises(ConfigError, match="has no export"):
        eval_launch_args("vicuna", "local", "r1", None, root)
    adapter = tmp_path / "vicuna" / "r1" / "export" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="LoRA adapter.*merge_lora"):
        eval_launch_args("vicuna", "local", "r1", None, root)
    (adapter.parent / "config.json").write_text("{}")
    over, name = eval_launch_args("vicuna", "local", "r1", None, root)
    assert name == "r1-eval" and f"model.pretrained={adapter.parent}" in over
    cfg = compose("vicuna", "local", over)  # a valid evaluation of the vicuna recipe
    assert cfg.train.objective == "eval" and cfg.train.strategy == "ddp"
    over, name = eval_launch_args("stack_llama", "local", None, "some/model", [], "mine")
    assert over[0] == "stage=sft" and name == "mine"
    compose("stack_llama", "local", over)  # its first stage's data and template, 8-bit off

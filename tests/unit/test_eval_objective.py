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

    priced = ["eval.judge.model=gpt-4o"]  # the catalog's row: $2.5 / $10 per million tokens
    p = project(compose("vicuna", "full", [*EVAL, *priced]))
    # 80 questions x 2 turns x (900 x $2.5 + 250 x $10) per million tokens
    assert p.usd_extra["judge_api"] == pytest.approx(160 * (900 * 2.5 + 250 * 10) / 1e6)
    assert p.usd_extra["storage"] == 0.0 and p.overhead_hours["checkpoints"] == 0.0
    assert p.assumptions["steps"] == 1 and p.compute_hours > 0  # the decode of the answers
    shorter = project(compose("vicuna", "full", [*EVAL, *priced, "eval.max_new_tokens=512"]))
    assert shorter.compute_hours == pytest.approx(p.compute_hours / 2, rel=0.2)
    # the held-out loss pass is priced as SFT forwards over the held-out split, not as decoding
    no_loss = project(compose("vicuna", "full", [*EVAL, *priced, "eval.loss=false"]))
    assert no_loss.overhead_hours["eval"] == 0.0 < p.overhead_hours["eval"]
    sft = project(compose("vicuna", "full"))
    assert p.overhead_hours["eval"] == pytest.approx(sft.overhead_hours["eval"], rel=0.3)
    # the base answers too (twice the decoding) and is graded; pairwise games are two calls
    both = project(compose("vicuna", "full", [*EVAL, *priced, "eval.base=huggyllama/llama-13b",
                                              "eval.baseline=base"]))  # fmt: skip
    assert both.usd_extra["judge_api"] == pytest.approx(4 * p.usd_extra["judge_api"])
    assert both.compute_hours == pytest.approx(2 * p.compute_hours, rel=0.05)
    # an explicit price wins over the catalog's
    own = ["eval.judge.usd_per_1m_input_tokens=1", "eval.judge.usd_per_1m_output_tokens=1",
           "eval.judge.price_source=our vLLM judge's GPU hour"]  # fmt: skip
    mine = project(compose("vicuna", "full", [*EVAL, *priced, *own]))
    assert mine.usd_extra["judge_api"] == pytest.approx(160 * 1150 / 1e6)


def test_a_judge_without_a_price_or_room_to_answer_is_refused():
    with pytest.raises(ConfigError, match=r"eval.judge.model='my-judge' has no price.*gpt-4o"):
        compose("vicuna", "full", [*EVAL, "eval.judge.model=my-judge"])
    with pytest.raises(ConfigError, match="together"):
        compose("vicuna", "full", [*EVAL, "eval.judge.usd_per_1m_input_tokens=1"])
    with pytest.raises(ConfigError, match="eval.max_new_tokens=2048 leaves no room"):
        compose(
            "vicuna",
            "full",
            [*EVAL, "eval.max_new_tokens=2048", "model.max_position_embeddings=2048"],
        )
    with pytest.raises(ConfigError, match="eval.baseline=base needs eval.base"):
        compose("vicuna", "full", [*EVAL, "eval.baseline=base"])
    with pytest.raises(ConfigError, match=r"cost.judges.gpt-4.source is empty"):
        compose("vicuna", "full", [*EVAL, 'cost.judges.gpt-4.source=" "'])


def test_baseline_answers_in_either_format_and_a_bad_line_named(tmp_path):
    from orchestrator.evaluation.stage import answers_of, load_baseline

    ours = '{"question_id": 1, "turns": ["a", "b"]}\n'
    fastchat = '{"question_id": 2, "model_id": "alpaca-13b", "choices": [{"index": 0, "turns": ["c", "d"]}]}\n'
    assert answers_of(ours + "\n" + fastchat, "f") == {1: ["a", "b"], 2: ["c", "d"]}
    with pytest.raises(ConfigError, match=r"answers.jsonl, line 2: not an answer row"):
        answers_of(ours + '{"question_id": "x", "turns": []}\n', "answers.jsonl")
    with pytest.raises(ConfigError, match="no such file"):
        load_baseline(str(tmp_path / "missing.jsonl"))
    f = tmp_path / "b.jsonl"
    f.write_text(fastchat)
    assert load_baseline(str(f)) == {2: ["c", "d"]}


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
    # a job with an eval stage is evaluated with that stage's settings; R may name the
    # pipeline run (its SFT stage's export), and the new run does not reuse R-eval
    sft = tmp_path / "koala" / "k1-sft" / "export"
    sft.mkdir(parents=True)
    (sft / "config.json").write_text("{}")
    over, name = eval_launch_args("koala", "local", "k1", None, root)
    assert over[0] == "stage=eval" and f"model.pretrained={sft}" in over and name == "k1-reeval"
    assert compose("koala", "local", over).eval.baseline == "base"


def test_a_pipeline_checks_its_eval_stage_before_its_first_stage_spends(monkeypatch, tmp_path):
    """Koala's full scale ends with a GPT-4 judge: without its key the pipeline stops before
    the SFT stage starts (not after $222 of training), naming the stage and the variable."""
    from orchestrator.launch.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="stage 'eval': eval.judge.api_key_env=OPENAI_API_KEY"):
        run_pipeline("koala", "full", [f"storage.root={tmp_path / 'runs'}"], "k1")
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
    bad = tmp_path / "baseline.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["a", "b"]}\nnot json\n')
    with pytest.raises(ConfigError, match=r"stage 'eval': .*baseline.jsonl, line 2"):
        run_pipeline("koala", "local", [f"storage.root={tmp_path / 'runs'}",
                                        f"eval.baseline={bad}"], "k2")  # fmt: skip


def test_an_evaluation_holds_weights_and_a_kv_cache_not_training_state():
    """The fit check of an eval stage: a 13B model in bf16 on every worker (DDP) fits an
    80 GB card, where training it so would not (gradients and Adam state)."""
    from orchestrator.cost.memory import check_job, estimate

    cfg = compose("koala", "full", ["stage=eval"])
    est = check_job(cfg)
    assert est is not None and est.fits
    n = 13_015_864_320
    assert est.state_bytes == pytest.approx(2 * n, rel=0.01)  # bf16 weights, nothing else
    m = cfg.model
    kv = 2 * m.num_layers * m.hidden_size * 2 * 10 * m.max_position_embeddings  # 80 q / 8
    assert est.extra_models_bytes == pytest.approx(kv)
    trained = estimate(compose("koala", "full", ["stage=sft", "train.strategy=ddp"]), n, n, 32000)
    assert not trained.fits

"""Multi-stage jobs: the stages' checks and the pipeline's pure decisions (launch/pipeline.py)."""

import pytest
import yaml

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.launch.pipeline import (
    Gate,
    Stage,
    StageRecord,
    gate_passes,
    skip,
    stage_budget,
    stages_of,
)
from orchestrator.paths import JOBS_DIR


def _job(tmp_path, stages, name="piped"):
    raw = yaml.safe_load((JOBS_DIR / "vicuna.yaml").read_text())
    raw["stages"] = stages
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_stages_are_overlays_in_order(tmp_path):
    job = _job(tmp_path, {
        "sft": {"budget_share": 0.6, "config": {"train": {"max_steps": 6}}},
        "more": {"input": "sft", "gate": {"stage": "sft", "metric": "eval_loss", "max": 9},
                 "config": {"train": {"max_steps": 4}, "optim": {"lr": 1e-5}}},
    })  # fmt: skip
    stages = stages_of(job, "local")
    assert [s.name for s in stages] == ["sft", "more"]
    assert stages[1] == Stage(
        "more", (("model.pretrained", "sft"),), None, Gate("sft", "eval_loss", None, 9)
    )
    more = compose(job, "local", ["stage=more"])
    assert more.train.max_steps == 4 and more.optim.lr == 1e-5
    assert compose(job, "local", ["stage=sft"]).train.max_steps == 6
    assert compose(job, "local").train.max_steps == compose("vicuna", "local").train.max_steps


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ({"a": {"input": "b"}, "b": {}}, "must be an earlier stage"),
        ({"a": {"budget_share": 0.7}, "b": {"budget_share": 0.5}}, "sum to 1.2"),
        ({"a": {"budget_share": 0}}, "budget_share=0"),
        ({"a": {}, "b": {"gate": {"stage": "c", "metric": "x"}}}, "gate must be"),
        ({"a": {"typo": 1}}, "unknown keys"),
        ({"../x": {}}, "not a valid name"),
    ],
)
def test_bad_stages_are_named(tmp_path, stages, match):
    with pytest.raises(ConfigError, match=match):
        stages_of(_job(tmp_path, stages), "local")


def test_an_unknown_stage_lists_the_stages(tmp_path):
    job = _job(tmp_path, {"sft": {}})
    with pytest.raises(ConfigError, match=r"no stage 'rl'.*\['sft'\]"):
        compose(job, "local", ["stage=rl"])


def test_stage_budgets_roll_unspent_shares_over():
    st = [Stage("a", budget_share=0.5), Stage("b", budget_share=0.3), Stage("c")]
    assert stage_budget(None, st, 0, 0.0) is None
    assert stage_budget(10.0, st, 0, 0.0) == pytest.approx(5.0)
    assert stage_budget(10.0, st, 1, 2.0) == pytest.approx(8.0 - 2.0)  # a left $3: rolled over
    assert stage_budget(10.0, st, 2, 7.0) == pytest.approx(3.0)  # c takes the unclaimed 0.2
    assert stage_budget(10.0, st, 1, 9.0) == 0.0  # overspent earlier: nothing left


def test_gates_and_skips():
    g = Gate("rm", "reward/accuracy", min=0.6)
    assert gate_passes(g, 0.61) and not gate_passes(g, 0.59) and not gate_passes(g, None)
    assert gate_passes(Gate("s", "eval_loss", max=2.0), 1.5)
    assert not gate_passes(Gate("s", "eval_loss", min=1.0, max=2.0), 2.5)
    done = StageRecord("done", "h1", "r-sft", "id", "completed", 0.1, "/x/export")
    assert skip(done, "h1") and not skip(done, "h2") and not skip(None, "h1")
    stopped = StageRecord("stopped", "h1", "r-sft", "id", "budget", 0.1, None)
    assert not skip(stopped, "h1")


def test_a_pipeline_projection_lists_each_stage_and_the_total(tmp_path):
    from orchestrator.cost.estimator import project
    from orchestrator.launch.pipeline import project_pipeline

    job = _job(tmp_path, {
        "sft": {"config": {"train": {"max_steps": 40}}},
        "more": {"input": "sft", "config": {"train": {"max_steps": 10}}},
    })  # fmt: skip
    pp = project_pipeline(job, "full")
    assert list(pp["stages"]) == ["sft", "more"]
    each = [project(compose(job, "full", [f"stage={s}"])).usd for s in ("sft", "more")]
    assert [pp["stages"][s]["usd"] for s in ("sft", "more")] == pytest.approx(each)
    assert pp["usd"] == pytest.approx(sum(each))
    assert pp["stages"]["sft"]["usd"] > pp["stages"]["more"]["usd"]  # 40 steps cost more than 10


def test_a_one_stage_launch_says_which_stages_are_left():
    from orchestrator.launch.pipeline import StageRecord, completion_message

    done = StageRecord("done", "h", "r-sft", "m", "completed", 0.1, "x")
    assert completion_message(["sft", "dpo"], None, {}) == "every stage finished"
    assert completion_message(["sft", "dpo"], "sft", {"sft": done}) == (
        "stage sft finished; stages dpo not run"
    )
    both = {"sft": done, "dpo": done}
    assert (
        completion_message(["sft", "dpo"], "dpo", both) == "stage dpo finished; every stage is done"
    )


def test_a_stages_identity_ignores_what_may_change_and_sees_everything_else():
    from orchestrator.compose.load import compose, to_dict
    from orchestrator.launch.pipeline import changed_keys, identity_config, stage_identity

    base = to_dict(compose("vicuna", "local"))
    ident = stage_identity(base, {"model.pretrained": "sha256:a"})
    for continuation in (["budget.max_usd=0.5"], ["train.max_steps=999"],
                         ["checkpoint.every_steps=7"], ["cost.overheads.startup_s=1"]):  # fmt: skip
        other = to_dict(compose("vicuna", "local", continuation))
        assert stage_identity(other, {"model.pretrained": "sha256:a"}) == ident, continuation
    changed = to_dict(compose("vicuna", "local", ["optim.lr=0.5"]))
    assert stage_identity(changed, {"model.pretrained": "sha256:a"}) != ident
    assert changed_keys(identity_config(base), identity_config(changed)) == ["optim.lr"]
    assert stage_identity(base, {"model.pretrained": "sha256:b"}) != ident  # another input


def test_stage_decisions_table():
    from orchestrator.launch.pipeline import StageRecord, stage_decision

    def rec(status, ident="i1"):
        return StageRecord(status, ident, "r", "m", "", 0.0, None)

    table = [
        (None, "i1", False, "run"),
        (rec("done"), "i1", False, "skip"),
        (rec("stopped"), "i1", False, "run"),  # resumes its checkpoints
        (rec("started"), "i1", False, "run"),
        (rec("done"), "i2", False, "refuse"),
        (rec("started"), "i2", False, "refuse"),
        (rec("done"), "i2", True, "run"),  # fresh
        (rec("done"), "i1", True, "run"),
    ]
    for record, ident, fresh, want in table:
        assert stage_decision(record, ident, fresh)[0] == want, (record, ident, fresh)

"""Money, time and size settings are bounded at config time (issue: `budget.teardown_s=-1e9`
was accepted and disabled the cap)."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget.teardown_s=-1e9", "budget.teardown_s=-1000000000.0 must be >= 0"),
        ("budget.teardown_s=4000", "beyond its maximum of 3600"),
        ("budget.max_hours=1e6", "beyond its maximum of 8760"),
        ("budget.max_usd=1e12", r"beyond its maximum of 1e\+07"),
        ("budget.max_usd=nan", "must be a finite number"),
        ("hardware.spot_wait_s=1e12", "hardware.spot_wait_s.*maximum"),
        ("cost.overheads.startup_s=-5", "cost.overheads.startup_s=-5.0 must be >= 0"),
        ("storage.retention_days=-1", "must be"),
    ],
)
def test_out_of_bounds_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("vicuna", "local", [override])


def test_every_shipped_job_is_within_bounds():
    import os

    from orchestrator.compose.load import job_configs
    from orchestrator.paths import JOBS_DIR

    for job in sorted(p.stem for p in JOBS_DIR.glob("*.yaml")):
        for scale in ("local", "full"):
            assert job_configs(job, scale), (job, scale)
    assert os.path.isdir(JOBS_DIR)


@pytest.mark.parametrize(
    "value",
    ["${oc.env:HOME}", "${oc.env :HOME}", "${ oc.env : HOME }", "x ${oc.decode:${optim.lr}}",
     "${${oc.env:HOME}}", "${oc.env:HOME"],
)  # fmt: skip
def test_resolvers_are_refused_whatever_the_spelling(value, tmp_path, monkeypatch):
    """Found by OmegaConf's own grammar, not a regular expression (`${oc.env :X}`, with a space
    before the colon, passed the old check and was resolved)."""
    monkeypatch.setenv("HOME", "/secret-home")
    with pytest.raises(ConfigError, match="resolvers such as") as err:
        compose("vicuna", "local", [f"description='{value}'"])
    assert "/secret-home" not in str(err.value)


def test_interpolating_another_key_is_allowed():
    from orchestrator.compose.load import calls_resolver

    assert not calls_resolver("${optim.lr}") and not calls_resolver("lr ${ optim.lr } x")
    assert not calls_resolver(r"\${oc.env:HOME}")  # escaped: a literal, never resolved
    cfg = compose("vicuna", "local", ["description=${job}"])
    assert cfg.description == "vicuna"


def test_yaml_alias_bombs_are_refused_before_anything_expands(tmp_path):
    """Nine levels of nine aliases (a 1 KB file) would expand to 9^9 nodes; the event stream is
    read without expanding anything (composing it once took minutes and gigabytes)."""
    from orchestrator.paths import read_yaml_mapping

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\njob: vicuna\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: expands to more than 100,000 YAML nodes"):
        read_yaml_mapping(bomb)
    with pytest.raises(ConfigError, match="command line: description: expands"):
        compose("vicuna", "local", ["description=" + "[" + ", ".join(["x"] * 200_000) + "]"])
    ok = tmp_path / "ok.yaml"  # a few aliases, as a person writes them, are fine
    ok.write_text("base: &b {lr: 1, wd: 0}\none: *b\ntwo: *b\n")
    assert read_yaml_mapping(ok)["two"] == {"lr": 1, "wd": 0}


def test_a_non_finite_loss_or_gradient_is_a_failure_naming_the_step():
    from orchestrator.config.errors import FatalError
    from orchestrator.training.loop import check_finite

    check_finite("loss", 2.5, 3, "bf16")
    check_finite("gradient norm", float("inf"), 3, "fp16")  # a skipped fp16 step, not a failure
    with pytest.raises(FatalError, match=r"non-finite loss \(nan\) at step 7"):
        check_finite("loss", float("nan"), 7, "fp32")
    with pytest.raises(FatalError, match="non-finite gradient norm"):
        check_finite("gradient norm", float("inf"), 2, "bf16")

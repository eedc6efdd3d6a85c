"""A launch on a named cluster carries the user's words (issue: `stage=` was dropped and
`--yes` always added), and the budget question is asked where the user is, before submitting."""

from __future__ import annotations

import pytest

from orchestrator.config.schema import ConfigError
from orchestrator.launch.checks import confirm_usd
from orchestrator.launch.named_clusters import entrypoint
from orchestrator.launch.remote import remote_consent


def test_entrypoint_carries_stage_and_yes_only_when_given():
    plain = entrypoint("stack_llama", "full", ["train.max_steps=5"], "r1")
    assert plain == ["python", "-m", "orchestrator", "launch", "stack_llama", "--scale", "full",
                     "--set", "train.max_steps=5", "--run", "r1"]  # fmt: skip
    staged = entrypoint("stack_llama", "full", None, "r1", stage="reward", yes=True)
    assert staged[-3:] == ["--stage", "reward", "--yes"]
    assert "--yes" not in entrypoint("vicuna") and "--stage" not in entrypoint("vicuna")


def test_confirm_usd_is_a_decision_table(monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # nobody to ask
    assert confirm_usd(None, 1e9, False) is False  # no cap
    assert confirm_usd(10.0, 9.99, False) is False  # within it
    assert confirm_usd(10.0, 11.0, True) is True  # over it, accepted up front
    with pytest.raises(ConfigError, match=r"exceeds budget.max_usd=\$10.0.*--yes"):
        confirm_usd(10.0, 11.0, False)


def test_remote_consent_prices_what_will_run(monkeypatch):
    monkeypatch.setattr("sys.stdin", None)
    over = ["budget.max_usd=0.000001"]
    # the whole pipeline, one stage, or a single-stage job: each over the cap, refused here
    with pytest.raises(ConfigError, match="bill of the pipeline"):
        remote_consent("stack_llama", "local", over, None, False)
    with pytest.raises(ConfigError, match="bill of stage reward"):
        remote_consent("stack_llama", "local", over, "reward", False)
    with pytest.raises(ConfigError, match="projected bill"):
        remote_consent("vicuna", "local", over, None, False)
    assert remote_consent("stack_llama", "local", over, "reward", True) is True
    assert remote_consent("vicuna", "local", [], None, False) is False  # no cap: no --yes
    with pytest.raises(ConfigError, match="the job's stages are"):
        remote_consent("stack_llama", "local", [], "nope", False)
    with pytest.raises(ConfigError, match="has no stages"):
        remote_consent("vicuna", "local", [], "sft", False)


def test_an_answer_at_the_terminal_is_carried_as_yes(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert remote_consent("vicuna", "local", ["budget.max_usd=0.000001"], None, False) is True


def test_a_launch_that_cannot_pay_its_start_up_under_the_cap_is_refused():
    from orchestrator.launch.checks import startup_refusal

    assert startup_refusal(None, 5.0, 1.0, 1.0) is None  # no cap
    assert startup_refusal(10.0, 7.0, 2.0, 1.0) is None  # exactly covered
    why = startup_refusal(10.0, 9.0, 2.0, 0.5)
    assert why and "$9.0000 is spent and $1.0000 is left" in why and "$2.0000 (start-up)" in why
    assert startup_refusal(1.0, 3.0, 0.1, 0.1)  # already over: nothing left to start with


def test_a_remote_launch_checks_its_start_up_against_what_the_run_spent(tmp_path, monkeypatch):
    """Decided on the driver, before submitting: a cap below the start-up alone, and a run
    whose ledger (in a store this machine reads) already spent its cap."""

    from orchestrator.compose.load import compose
    from orchestrator.config.errors import BudgetRefusal
    from orchestrator.launch.remote import remote_startup_check

    monkeypatch.setenv("ORCHESTRATOR_STORAGE_ROOT", str(tmp_path))
    with pytest.raises(BudgetRefusal, match=r"\$0.0000 is spent.*starting costs"):
        remote_startup_check(compose("vicuna", "local", ["budget.max_usd=0.0000001"]), "r")
    cfg = compose("vicuna", "local", ["budget.max_usd=1.0"])
    remote_startup_check(cfg, "r")  # a new run: start-up is a fraction of a cent
    from orchestrator.cost.ledger import Ledger, NodeLife
    from orchestrator.storage.durable import open_durable

    ledger = Ledger(open_durable(str(tmp_path / "vicuna" / "r")))
    attempt = ledger.begin(0.0)
    seconds = 1.001 / 2.0 * 3600  # a node at $2/h for a bit over the $1 cap
    ledger.add_nodes([NodeLife("n1", "x", "on_demand", 2.0, 2.0, 0.0, seconds)])
    ledger.end(attempt, seconds)
    with pytest.raises(BudgetRefusal, match=r"\$1.00\d\d is spent and \$0.0000 is left"):
        remote_startup_check(cfg, "r")

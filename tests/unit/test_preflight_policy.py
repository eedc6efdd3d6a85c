"""The pure parts of `make preflight`: quota families and the quota decision."""

from __future__ import annotations

from orchestrator.launch.preflight import QUOTA_CODES, family, needed_vcpus, quota_check


def test_quota_decision_and_families():
    assert family("p4de.24xlarge") == "P" and family("g5.48xlarge") == "G"
    assert family("m7i.2xlarge") == "standard"
    ok = quota_check("spot", "P", QUOTA_CODES["P"]["spot"], 192, 96)
    assert ok.ok and "needs 96" in ok.detail
    short = quota_check("spot", "P", QUOTA_CODES["P"]["spot"], 0, 96)
    assert not short.ok and "--desired-value 96" in short.fix


def test_vcpus_needed_follow_the_nodes():
    from orchestrator.config.load import compose

    assert needed_vcpus(compose("vicuna", "full")) == ("p4de.24xlarge", 96)
    big = compose("cerebras_gpt", "full", ["variant=13b"])
    assert needed_vcpus(big)[1] == big.hardware.num_nodes * 96

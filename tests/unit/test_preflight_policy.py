"""The pure parts of `make preflight`: quota families and the quota decision."""

from __future__ import annotations

from orchestrator.compose.load import compose
from orchestrator.launch.preflight import QUOTA_CODES, family, needed_vcpus, quota_check


def test_quota_decision_and_families():
    assert family("p4de.24xlarge") == "P" and family("g5.48xlarge") == "G"
    assert family("m7i.2xlarge") == "standard"
    ok = quota_check("spot", "P", QUOTA_CODES["P"]["spot"], 192, 96)
    assert ok.ok and "needs 96" in ok.detail
    short = quota_check("spot", "P", QUOTA_CODES["P"]["spot"], 0, 96)
    assert not short.ok and "--desired-value 96" in short.fix


def test_vcpus_needed_follow_the_nodes():
    from orchestrator.compose.load import compose

    assert needed_vcpus(compose("vicuna", "full")) == ("p4de.24xlarge", 96)
    big = compose("cerebras_gpt", "full", ["variant=13b"])
    assert needed_vcpus(big)[1] == big.hardware.num_nodes * 96


def test_the_image_must_hold_what_the_job_needs():
    from orchestrator.launch.preflight import image_contents_check, manifest_config_digest

    img = "1.dkr.ecr.us-east-1.amazonaws.com/orchestrator:latest"
    flash = compose("vicuna", "full", ["model.attn_implementation=flash_attention_2"])
    built = {
        "org.orchestrator.flash-attn": "2.8.3.post2",
        "org.orchestrator.bitsandbytes": "0.50.2",
    }
    assert image_contents_check(img, flash, built).ok
    without = {**built, "org.orchestrator.flash-attn": "none"}  # FLASH_ATTN_VERSION= at build
    bad = image_contents_check(img, flash, without)
    assert not bad.ok and "flash_attention_2 needs flash-attn" in bad.detail
    assert not image_contents_check(img, flash, {}).ok  # not built from infra/Dockerfile
    eight = compose("alpaca_lora", "full")
    assert eight.model.load_8bit and image_contents_check(img, eight, built).ok
    assert image_contents_check(
        img, compose("dolly", "full", ["model.attn_implementation=sdpa"]), None
    ).ok
    assert manifest_config_digest({"config": {"digest": "sha256:ab"}}) == "sha256:ab"
    assert manifest_config_digest({"manifests": [{"digest": "sha256:cd"}]}) is None

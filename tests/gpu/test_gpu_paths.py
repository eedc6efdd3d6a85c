"""CUDA-only paths (NCCL, FSDP2 CPU offload, bf16 on GPU, flash attention, 8-bit bases).
Selected with `make test-gpu`; skipped without 2 CUDA GPUs."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import requires_gpus

pytestmark = [pytest.mark.gpu, requires_gpus(2)]

GPU = [
    "hardware.accelerator=A100-80GB",
    "hardware.gpus_per_worker=1",
    "hardware.num_workers=2",
    "hardware.instance_type=p4de.24xlarge",
    "train.max_steps=4",
    "checkpoint.every_steps=2",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.strategy=fsdp", "fsdp.cpu_offload=true", "train.precision=bf16"],
        ["train.strategy=ddp", "train.precision=bf16"],
        ["train.strategy=deepspeed", "deepspeed.zero_stage=3", "train.precision=bf16"],
    ],
)
def test_strategies_on_nccl(overrides, tmp_path, monkeypatch):
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    res = launch("vicuna", "local", GPU + overrides, run_name="gpu")
    assert res.stop_reason == "completed" and res.step == 4


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None,
    reason="needs flash-attn: MAX_JOBS=4 .venv/bin/pip install --no-build-isolation "
    "flash-attn==2.8.3.post2",
)
def test_flash_attention(tmp_path, monkeypatch):
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    res = launch(
        "vicuna",
        "local",
        GPU + ["model.attn_implementation=flash_attention_2", "train.precision=bf16"],
        run_name="flash",
    )
    assert res.stop_reason == "completed"

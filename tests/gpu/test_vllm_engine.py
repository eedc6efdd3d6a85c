"""The vLLM rollout engine (orchestrator/rl/rollout.py) on a GPU: what the CPU cannot run.
Skipped without CUDA or without vLLM (`pip install -e '.[vllm]'`, GPUs only).

- `VllmEngine` samples G completions per prompt from a small model folder;
- after a change to the policy's weights, `sync_weights` makes vLLM sample from the new
  weights (greedy output equals transformers' greedy output of the changed model);
- the tiny_zero GRPO recipe runs with `grpo.engine=vllm` and resumes like the hf engine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import requires_gpus

pytestmark = [
    pytest.mark.gpu,
    requires_gpus(1),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def test_vllm_samples_groups_and_takes_synced_weights(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.rl.rollout import Sampling, VllmEngine
    from orchestrator.training.bases import local_base

    folder = str(local_base("base:tiny_llama"))
    engine = VllmEngine(folder, seed=0, gpu_memory_utilization=0.2)
    prompts = [[1, 5, 6, 7], [1, 8, 9]]
    out = engine.generate(prompts, Sampling(n=3, max_new_tokens=8, temperature=1.0))
    assert len(out) == 6 and all(0 < len(c) <= 8 for c in out)

    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.sync_weights(policy)
    greedy = Sampling(n=1, max_new_tokens=6, temperature=0.0)
    got = engine.generate([prompts[0]], greedy)[0]
    want = policy.generate(torch.tensor([prompts[0]]).cuda(), max_new_tokens=6, do_sample=False,
                           min_new_tokens=6)[0, 4:].tolist()  # fmt: skip
    assert got == want and engine.version == 1


def test_tiny_zero_runs_with_the_vllm_engine(tmp_path, monkeypatch):
    from orchestrator.launch.run import launch
    from tests.gpu.test_gpu_smoke import gpu_overrides

    monkeypatch.chdir(tmp_path)
    over = [o for o in gpu_overrides(1) if "precision" not in o] + ["grpo.engine=vllm"]
    res = launch("tiny_zero", "local", over, run_name="tz-vllm")
    assert res.stop_reason == "completed" and res.step == 4
    assert (Path(res.run_dir) / "export" / "config.json").exists()

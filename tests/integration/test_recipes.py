"""Every seed recipe runs at local scale through the real launcher (shared Ray cluster): a few
steps with checkpoints, an export, then the resume test every recipe has: the last checkpoint
is deleted and a relaunch redoes exactly the steps after the one before, with the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.checkpoint.manifest import step_dirname
from orchestrator.compose.load import job_names, job_stages
from orchestrator.storage.layout import METRICS_TAIL

pytestmark = pytest.mark.integration

OWN_TESTS = {
    "vicuna": "test_launch_vicuna.py, test_chaos.py",
    "tiny_zero": "test_rl_stages.py (GRPO, SIGKILLed and resumed)",
}
"""Single-stage recipes tested elsewhere at more length. Pipeline jobs (`stages:`) are tested
stage by stage in test_rl_stages.py."""
RECIPES = [j for j in job_names() if not job_stages(j) and j not in OWN_TESTS]
"""Every other recipe of jobs/ (a new recipe is tested here without editing this file)."""
OVERRIDES = [
    "train.max_steps=4",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
    "train.log_every_steps=1",
]


def losses(run_dir: Path, attempt: int) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["attempt"] == attempt}


@pytest.mark.parametrize("job", RECIPES)
def test_recipe_trains_exports_and_resumes(job, launch_workdir):
    from transformers import AutoModelForCausalLM

    from orchestrator.launch.run import launch

    res = launch(job, "local", OVERRIDES, run_name="it")
    assert res.stop_reason == "completed" and res.step == 4
    run_dir = Path(res.run_dir)
    first = losses(run_dir, 1)
    assert sorted(first) == [1, 2, 3, 4]
    export = run_dir / "export"
    from orchestrator.checkpoint.exports import verify_model_folder

    verify_model_folder(export)  # content-addressed: every file matches its manifest
    ckpt = json.loads((Path(res.checkpoint_dir) / step_dirname(4) / "manifest.json").read_text())
    from orchestrator.compose.load import compose

    cfg = compose(job, "local", OVERRIDES)
    # LoRA/adapter checkpoints hold the trained parameters, and name the base they apply to
    assert ckpt["holds"] == ("all" if cfg.train.method == "full" else "trainable"), ckpt["holds"]
    if cfg.model.pretrained:
        assert ckpt["base"]["digest"].startswith("sha256:"), ckpt["base"]
    # the size the bill, the disk check and the save-time model use is what was written
    from orchestrator.cost.memory import (
        MANIFEST_BYTES,
        checkpoint_bytes,
        checkpoint_counts,
        trainable_params,
    )

    vocab = json.loads(((export if (export / "config.json").exists() else Path(ckpt["base"]["ref"]))
                        / "config.json").read_text())["vocab_size"]  # fmt: skip
    written = sum(f["bytes"] for rel, f in ckpt["files"].items() if rel != METRICS_TAIL)
    modelled = checkpoint_bytes(cfg, *trainable_params(cfg, vocab), *checkpoint_counts(cfg, vocab))
    assert written == pytest.approx(modelled - MANIFEST_BYTES, rel=0.12), (written, modelled)
    if cfg.model.load_8bit:  # trained on an int8 base, exported as a plain model
        assert "quantization_config" not in json.loads((export / "config.json").read_text())
        assert (export / "adapter" / "adapter_config.json").exists()  # and the adapter alone
    if not (export / "config.json").exists():  # LLaMA-Adapter: a peft folder over the base
        from peft import PeftModel
        from safetensors.torch import load_file

        # the adapter names its base by where the run published it (not a node's copy)
        adapter_cfg = json.loads((export / "adapter/adapter_config.json").read_text())
        base = adapter_cfg["base_model_name_or_path"]
        assert "/.bases/" in base and Path(base).exists(), base
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), export / "adapter")
        # ~1K trainable numbers barely move the loss in 4 steps; the zero-initialised gates
        # opening shows the adapter trained.
        gates = [v for k, v in load_file(export / "adapter/adapter_model.safetensors").items()
                 if k.endswith("adaption_gate")]  # fmt: skip
        assert gates and all(float(g.abs().max()) > 0 for g in gates)
    else:
        AutoModelForCausalLM.from_pretrained(export)  # loads as a plain HF model
        assert first[4] < first[1], first
    prompts = 4 if job == "cerebras_gpt" else 5  # plain-text continuations vs chat prompts
    assert len(json.loads((run_dir / "export" / "samples.json").read_text())) == prompts
    if job == "cerebras_gpt":  # pretraining: streamed rows, planned vs trained tokens logged
        result = json.loads((run_dir / "result.json").read_text())
        assert result["tokens"] == 4 * cfg.train.global_batch_size * cfg.data.max_seq_len
        assert result["pretrain/tokens_planned"] == cfg.train.max_tokens

    shutil.rmtree(Path(res.checkpoint_dir) / step_dirname(4))
    again = launch(job, "local", OVERRIDES, run_name="it")
    assert again.attempt == 2 and again.step == 4
    second = losses(run_dir, 2)
    assert sorted(second) == [3, 4]
    # the same losses: the same weights AND the same data (a text stream resumes at its exact
    # read position, saved in the checkpoint manifest)
    for step, loss in second.items():
        assert loss == pytest.approx(first[step], abs=1e-6), (job, step)

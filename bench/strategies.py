"""DDP / FSDP2 / ZeRO-2 / ZeRO-3 (+offload) on 2 Ray workers: tokens/s, peak RSS per worker,
checkpoint size and save time.

    .venv/bin/python bench/run.py strategies
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench._common import local_ray


def run(steps: int = 6) -> dict:
    """Per strategy, 2 workers, a ~25M-parameter Llama (so model state dominates worker memory):
    tokens/s over steps 2..N, peak RSS per worker, checkpoint size and save time."""
    import ray

    from orchestrator.checkpoint.manifest import latest_complete
    from orchestrator.launch.run import launch

    model = [
        "model.pretrained=null",  # its own shape, random init
        "model.hidden_size=512",
        "model.intermediate_size=1376",
        "model.num_layers=8",
        "model.num_heads=8",
        "train.activation_checkpointing=false",
        "export.enabled=false",
    ]
    variants = {
        "ddp": ["train.strategy=ddp"],
        "fsdp": ["train.strategy=fsdp"],
        "zero2": ["train.strategy=deepspeed", "deepspeed.zero_stage=2"],
        "zero3": ["train.strategy=deepspeed", "deepspeed.zero_stage=3"],
        "zero3_offload": [
            "train.strategy=deepspeed",
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
        ],
    }
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        old = Path.cwd()
        os.chdir(d)
        local_ray()
        try:
            for name, sets in variants.items():
                res = launch(
                    "vicuna",
                    "local",
                    model + sets + [f"train.max_steps={steps}", f"checkpoint.every_steps={steps}"],
                    run_name=name,
                )
                r = json.loads((Path(res.run_dir) / "result.json").read_text())
                _, manifest = latest_complete(Path(res.checkpoint_dir))
                tokens = r["tokens"]
                step_s = r["step_s"][1:]  # step 1 pays one-off warm-up
                rows[name] = {
                    "n_params": r["n_params"],
                    "tokens_per_s": round(tokens / len(r["step_s"]) * len(step_s) / sum(step_s), 1),
                    "peak_rss_mb_per_worker": [round(x) for x in r["peak_rss_mb_per_worker"]],
                    "checkpoint_mb": round(
                        sum(f["bytes"] for f in manifest["files"].values()) / 2**20, 1
                    ),
                    "checkpoint_save_s": round(r["checkpoint_s"][-1], 2),
                }
        finally:
            ray.shutdown()
            os.chdir(old)
    out = {"steps": steps, "workers": 2, "strategies": rows}
    return out

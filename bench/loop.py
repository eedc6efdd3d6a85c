"""Tokens/s of our training loop (Trainer: FSDP2 wrapping, exact token-mean loss, logging,
cost) against a bare torch loop (plain model, AdamW, same micro-batches), both in one process
with the same threads, same model, same batches, in the same run. The ratio is what matters on
this noisy machine.

    .venv/bin/python bench/run.py loop
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench._common import single_process_group

IN_PROCESS = True  # drives torch.distributed in this process: run before Ray starts


def run(steps: int = 30, threads: int = 2) -> dict:
    """Our recipe vs a bare loop, one process each in turn, same batches."""

    from bench._common import bench_context
    from orchestrator.compose.load import compose
    from orchestrator.data.dataset import StepBatches, prepare_data
    from orchestrator.training.loop import Trainer
    from orchestrator.training.model import build_model

    torch.set_num_threads(threads)
    single_process_group()
    cfg = compose(
        "vicuna",
        "local",
        [
            f"train.max_steps={steps}",
            "model.pretrained=null",  # the model is built here, from the same config
            "checkpoint.every_steps=100000",
            f"train.num_threads_per_worker={threads}",
            "hardware.num_workers=1",
            "train.global_batch_size=16",
        ],
    )
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = prepare_data(cfg.data, d / "data")
        ctx = bench_context(d, str(d / "data"))

        batches = StepBatches(
            data.train,
            global_batch_size=16,
            micro_batch_size=cfg.train.micro_batch_size,
            world_size=1,
            rank=0,
            seed=cfg.train.seed,
            pad_id=data.pad_id,
        )
        real_tokens = sum(
            sum(len(e.input_ids) for e in batches.global_examples(s)) for s in range(steps)
        )

        def bare() -> float:
            model = build_model(cfg.model, data.vocab_size)
            if cfg.train.activation_checkpointing:
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
            model.train()
            t = time.perf_counter()
            for s in range(steps):
                mbs, _ = batches.step(s)
                for mb in mbs:
                    out = model(
                        input_ids=mb["input_ids"],
                        attention_mask=mb["attention_mask"],
                        labels=mb["labels"],
                    )
                    (out.loss / len(mbs)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        def ours() -> float:
            import shutil

            shutil.rmtree(d / "ckpt", ignore_errors=True)
            shutil.rmtree(d / "bench", ignore_errors=True)  # the run folder: timeline, events
            recipe = Trainer(cfg, ctx)
            recipe.setup()
            t = time.perf_counter()
            recipe.train()  # includes the end-of-run checkpoint and eval, as a user pays them
            el = time.perf_counter() - t
            recipe.cleanup()
            return el

        # Interleave to spread machine noise over both; report the best of each.
        bare_s, ours_s = [], []
        for _ in range(2):
            bare_s.append(bare())
            ours_s.append(ours())
    out = {
        "steps": steps,
        "threads": threads,
        "real_tokens": real_tokens,
        "bare_torch_tokens_per_s": round(real_tokens / min(bare_s), 1),
        "ours_tokens_per_s": round(real_tokens / min(ours_s), 1),
        "ours_over_bare": round(min(bare_s) / min(ours_s), 3),
        "bare_s": [round(x, 2) for x in bare_s],
        "ours_s": [round(x, 2) for x in ours_s],
    }
    return out

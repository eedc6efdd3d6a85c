"""Batching benchmark: effective (non-pad) tokens/s of HF Trainer's padding strategies against our
loop's batching modes, same model, same data, same machine, one run.

Model: Llama, hidden 256, ffn 688, 4 layers, 4 heads, vocab 4096, fp32, random init. Data: 4000
examples, lengths lognormal (median 180, sigma 0.9) clipped to [16, 1024], every token trained.
Each configuration trains optimizer steps of 40 examples from its own epoch order: 10 steps
(400 random examples) for ours and HF pad-to-longest, 4 for HF pad-to-max (random order, so any
prefix is a fair sample), and one whole LengthGroupedSampler megabatch (25 steps, 1000 examples)
for HF group_by_length, which sorts each megabatch longest first. One process with 2 threads. Throughput = real tokens processed / wall time of the whole training call
(not a median of per-step rates); padding efficiency = real tokens / token slots processed.

    .venv/bin/python bench/run.py batching
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import torch

IN_PROCESS = True  # drives torch.distributed in this process: run before Ray starts

N_EXAMPLES, MAX_LEN, VOCAB = 4000, 1024, 4096
GLOBAL_BATCH, MICRO = 40, 8
# HF's LengthGroupedSampler sorts megabatches of min(4000 // (40 * 4), 50) = 25 batches of 40
# = 1000 examples: group_by_length runs one whole megabatch (25 steps) so that it trains on a
# random sample of the length distribution, like every other configuration.


def make_examples(seed: int = 0):
    from orchestrator.data.templates import Example

    rng = random.Random(seed)
    out = []
    for _ in range(N_EXAMPLES):
        n = int(min(MAX_LEN, max(16, round(rng.lognormvariate(math.log(180), 0.9)))))
        ids = [rng.randrange(4, VOCAB) for _ in range(n)]
        out.append(Example(ids, list(ids)))
    return out


def model_config():
    from orchestrator.config.schema import ModelConfig

    return ModelConfig(
        arch="llama", hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
        vocab_size=VOCAB, max_position_embeddings=MAX_LEN,
    )  # fmt: skip


def hf_trainer(examples, steps: int, padding: str, threads: int) -> dict:
    """HF Trainer: padding='max_length' (FastChat/Vicuna), 'longest' in random order (Alpaca),
    or 'group_by_length' (transformers 5: train_sampling_strategy='group_by_length', i.e.
    LengthGroupedSampler, + pad to longest)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from orchestrator.training.model import build_model

    torch.set_num_threads(threads)
    seen = {"real": 0, "slots": 0}

    def collate(rows):
        width = MAX_LEN if padding == "max_length" else max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        seen["real"] += int(mask.sum())
        seen["slots"] += ids.numel()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    ds = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    )
    model = build_model(model_config(), VOCAB)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=MICRO,
            gradient_accumulation_steps=GLOBAL_BATCH // MICRO,
            max_steps=steps,
            learning_rate=1e-4,
            train_sampling_strategy="group_by_length" if padding == "group_by_length" else "random",
            save_strategy="no",
            report_to=[],
            logging_steps=10**6,
            dataloader_num_workers=0,
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
        t = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - t
    return _row(seen["real"], seen["slots"], elapsed)


def _config(steps: int, mode: str, workers: int, threads: int, **train):
    """The bench job: vicuna's local recipe with the bench model, batch and mode."""
    from orchestrator.compose.load import compose

    mc = model_config()
    return compose(
        "vicuna",
        "local",
        [
            f"train.max_steps={steps}",
            f"train.batching={mode}",
            f"train.micro_batch_size={MICRO // workers}",
            f"train.global_batch_size={GLOBAL_BATCH}",
            f"hardware.num_workers={workers}",
            f"train.num_threads_per_worker={threads}",
            "train.activation_checkpointing=false",
            "checkpoint.every_steps=100000",
            "export.enabled=false",
            "optim.lr=1e-4",
            f"data.max_seq_len={MAX_LEN}",
            "model.pretrained=null",  # the bench model's own shape, random init as HF Trainer's
            *[
                f"model.{k}={getattr(mc, k)}"
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_layers",
                    "num_heads",
                    "max_position_embeddings",
                )
            ],
            *[f"train.{k}={v}" for k, v in train.items()],
        ],  # fmt: skip
    )


def _run_context(d: Path, examples):
    """A run folder holding the synthetic examples as prepared data, and its MLflow run."""
    from bench._common import bench_context
    from orchestrator.data.prepared import write_prepared

    (d / "tok").mkdir(exist_ok=True)
    write_prepared(
        d / "data", key="bench", examples=examples, train_index=list(range(len(examples))),
        eval_index=[], tokenizer_dir=d / "tok", vocab_size=VOCAB, pad_id=0,
        num_rows=len(examples), skipped_rows=0, identity={},
    )  # fmt: skip
    return bench_context(d, str(d / "data"))


def _tokens(b, steps: int) -> tuple[int, int]:
    """(real tokens, processed slots) of the first `steps` steps of a StepBatches."""
    real = sum(len(e.input_ids) for s in range(steps) for e in b.global_examples(s))
    return real, sum(b.padded_tokens(s) for s in range(steps))


def ours(examples, steps: int, mode: str, threads: int, **train) -> dict:
    """Our Trainer (FSDP2 on one gloo rank, exact token-mean loss, logging, cost, the
    end-of-run checkpoint) with one batching mode."""
    from orchestrator.training.loop import Trainer

    torch.set_num_threads(threads)
    cfg = _config(steps, mode, 1, threads, **train)
    with tempfile.TemporaryDirectory() as d:
        recipe = Trainer(cfg, _run_context(Path(d), examples))
        recipe.setup()
        real, slots = _tokens(recipe.batches, steps)
        t = time.perf_counter()
        recipe.train()
        elapsed = time.perf_counter() - t
        recipe.cleanup()
    return _row(real, slots, elapsed)


def ours_on_ray(examples, steps: int, mode: str, workers: int = 2) -> dict:
    """Our loop on `workers` Ray Train workers (1 thread each, gloo), FSDP2. Throughput over the
    training steps (the sum of step times in result.json: worker start-up excluded)."""
    import json
    from dataclasses import asdict

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.compose.load import to_dict
    from orchestrator.data.dataset import StepBatches
    from orchestrator.training.entry import train_fn

    cfg = _config(steps, mode, workers, 1)
    d = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    ctx = _run_context(d, examples)
    TorchTrainer(
        train_fn,
        train_loop_config={"config": to_dict(cfg), "context": asdict(ctx)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"bench-{mode}", storage_path=str(d / "ray")),
    ).fit()
    result = json.loads((d / "result.json").read_text())
    b = StepBatches(
        examples, global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO // workers,
        world_size=workers, rank=0, seed=cfg.train.seed, pad_id=0, mode=result["batching"],
    )  # fmt: skip
    return _row(*_tokens(b, steps), sum(result["step_s"]))


def _row(real: int, slots: int, elapsed: float) -> dict:
    return {
        "real_tokens": real,
        "padding_efficiency": round(real / slots, 3),
        "seconds": round(elapsed, 1),
        "tokens_per_s": round(real / elapsed, 1),
    }


def pass_rates(threads: int) -> dict:
    """Forward + backward slots/s of single passes of the bench model, by (rows, width): what
    the CPU token budget is chosen from."""
    from orchestrator.training.model import build_model

    torch.set_num_threads(threads)
    model = build_model(model_config(), VOCAB)
    out = {}
    for rows, width in [(1, 128), (4, 128), (8, 128), (16, 128), (32, 128), (4, 256), (8, 256),
                        (16, 256), (2, 512), (4, 512), (1, 1024), (2, 1024), (4, 1024)]:  # fmt: skip
        x = torch.randint(4, VOCAB, (rows, width))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            logits = model(input_ids=x, use_cache=False).logits
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
            best = min(best, time.perf_counter() - t)
        out[f"{rows}x{width}"] = round(rows * width / best)
    return out


def run(steps: int = 10, threads: int = 2, ray_workers: bool = True) -> dict:
    from bench._common import local_ray, single_process_group

    single_process_group()
    examples = make_examples()
    runs = {
        # Random order: any prefix is a fair sample; 4 steps of 40 x 1024 slots is plenty.
        "hf_pad_to_max": lambda: hf_trainer(examples, 4, "max_length", threads),
        "hf_pad_longest_random": lambda: hf_trainer(examples, steps, "longest", threads),
        # One whole LengthGroupedSampler megabatch (mega_batch_mult 25 x 40 = 1000 examples):
        # a shorter prefix would be its longest examples only.
        "hf_group_by_length": lambda: hf_trainer(examples, 25, "group_by_length", threads),
        "ours_pad": lambda: ours(examples, steps, "pad", threads),
        "ours_grouped_default": lambda: ours(examples, steps, "auto", threads),
        "ours_grouped_budget_1024": lambda: ours(
            examples, steps, "grouped", threads, tokens_per_micro_batch=1024
        ),
        "ours_grouped_budget_2048": lambda: ours(
            examples, steps, "grouped", threads, tokens_per_micro_batch=2048
        ),
        "ours_grouped_budget_4096": lambda: ours(
            examples, steps, "grouped", threads, tokens_per_micro_batch=4096
        ),
        "ours_grouped_ddp": lambda: ours(examples, steps, "grouped", threads, strategy="ddp"),
        # HF's sampling: megabatches of 25 steps sorted by length (one whole megabatch run).
        "ours_grouped_length_grouped_steps_25": lambda: ours(
            examples, 25, "grouped", threads, length_grouped_steps=25
        ),
        "ours_packed_1024": lambda: ours(examples, steps, "packed", threads, pack_len=1024),
        "ours_packed_2048": lambda: ours(examples, steps, "packed", threads, pack_len=2048),
    }
    modes = {name: run() for name, run in runs.items()}
    if ray_workers:
        import ray

        local_ray()
        for mode in ("pad", "grouped", "packed"):
            modes[f"ray2_ours_{mode}"] = ours_on_ray(examples, steps, mode)
        ray.shutdown()
    ref = modes["ours_grouped_default"]["tokens_per_s"]
    for name, row in modes.items():
        if not name.startswith("ray2_"):  # the Ray rows exclude start-up: compare among them
            row["default_speedup_over_this"] = round(ref / row["tokens_per_s"], 2)
        print(name, row, flush=True)
    rates = pass_rates(threads)
    print("pass slots/s", rates, flush=True)
    out = {
        "pass_slots_per_s": rates,
        "steps": steps,
        "global_batch": GLOBAL_BATCH,
        "threads": threads,
        "model": "llama h256 ffn688 L4 H4 V4096 fp32",
        "data": "4000 ex, lognormal median 180 sigma 0.9, [16, 1024]",
        "modes": modes,
    }
    return out

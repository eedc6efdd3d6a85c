"""Benchmarks of the vertical slice. Writes bench/results/<name>.json and bench/results/RESULTS.md.

    make bench                      # all benchmarks
    .venv/bin/python bench/run.py loop

1. `launch`: `launch vicuna` (local) from the call to the first optimizer step, and in total.
2. `loop`: tokens/s of our training loop (FinetuneRecipe: FSDP2 wrapping, exact token-mean
   loss, logging, cost) against a bare torch loop (plain model, AdamW, same micro-batches), both
   in one process with the same threads, same model, same batches, in the same run. The ratio is
   what matters on this noisy machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))


def _write(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        **payload,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


def bench_launch(steps: int = 20) -> dict:
    from orchestrator.launch.run import launch

    with tempfile.TemporaryDirectory() as d:
        old = Path.cwd()
        os.chdir(d)
        try:
            t0 = time.time()
            res = launch(
                "vicuna",
                "local",
                [f"train.max_steps={steps}", "checkpoint.every_steps=1000"],
                run_name="bench",
            )
            events = [
                json.loads(x) for x in (Path(res.run_dir) / "events.jsonl").read_text().splitlines()
            ]
        finally:
            os.chdir(old)
    first = events[0]["time"] - t0
    train_s = events[-1]["time"] - events[0]["time"]
    out = {
        "steps": steps,
        "launch_to_first_step_s": round(first, 2),
        "wall_s": round(res.wall_s, 2),
        "steps_2_to_last_s": round(train_s, 2),
        "share_of_wall_before_first_step": round(first / res.wall_s, 3),
    }
    _write("launch", out)
    return out


def _single_process_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        store = dist.FileStore(tempfile.mktemp(prefix="pg-"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)


def bench_loop(steps: int = 30, threads: int = 2) -> dict:
    """Our recipe vs a bare loop, one process each in turn, same batches."""
    import mlflow

    from orchestrator.config.load import compose
    from orchestrator.data.dataset import StepBatches, prepare_data
    from orchestrator.training.loop import FinetuneRecipe, RunContext
    from orchestrator.training.model import build_model

    torch.set_num_threads(threads)
    _single_process_group()
    cfg = compose(
        "vicuna",
        "local",
        [
            f"train.max_steps={steps}",
            "checkpoint.every_steps=100000",
            f"train.num_threads_per_worker={threads}",
            "hardware.num_workers=1",
            "train.global_batch_size=16",
        ],
    )
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = prepare_data(cfg.data, d / "data")
        uri = f"sqlite:///{d / 'mlflow.db'}"
        client = mlflow.tracking.MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        ctx = RunContext(
            run_dir=str(d),
            checkpoint_dir=str(d / "ckpt"),
            data_path=str(d / "data/data.pt"),
            tracking_uri=uri,
            mlflow_run_id=run_id,
            attempt=1,
            attempt_start_time=time.time(),
            usd_before_attempt=0.0,
            price_per_hour_usd=0.1,
            config_hash="bench",
        )

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
            (d / "events.jsonl").unlink(missing_ok=True)
            recipe = FinetuneRecipe(cfg, ctx)
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
    _write("loop", out)
    return out


def bench_strategies(steps: int = 6) -> dict:
    """Per strategy, 2 workers, a ~25M-parameter Llama (so model state dominates worker memory):
    tokens/s over steps 2..N, peak RSS per worker, checkpoint size and save time."""
    import ray

    from orchestrator.checkpoint.manifest import latest_complete
    from orchestrator.launch.run import launch

    model = [
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
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(dir="/tmp"),
            logging_level="warning",
        )
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
    _write("strategies", out)
    return out


def write_table() -> None:
    rows = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py). Ratios matter; this machine is noisy.",
        "",
    ]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        rows += [
            f"## {r['bench']} ({r['when']}, {r['machine']})",
            "",
        ]
        if "strategies" in r:
            rows += [
                "| strategy | tokens/s | peak RSS per worker (MB) | checkpoint MB | save s |",
                "|---|---|---|---|---|",
            ]
            rows += [
                f"| {n} | {v['tokens_per_s']} | {v['peak_rss_mb_per_worker']} | {v['checkpoint_mb']} "
                f"| {v['checkpoint_save_s']} |"
                for n, v in r["strategies"].items()
            ]
            rows.append("")
            continue
        rows += ["| metric | value |", "|---|---|"]
        rows += [f"| {k} | {v} |" for k, v in r.items() if k not in ("bench", "when", "machine")]
        rows.append("")
    (RESULTS / "RESULTS.md").write_text("\n".join(rows))


BENCHES = {"launch": bench_launch, "loop": bench_loop, "strategies": bench_strategies}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            sys.exit(f"unknown benchmark {name!r}; choose from {list(BENCHES)}")
    if "loop" in names:  # in-process torch.distributed first, before Ray owns this process
        bench_loop()
    if "launch" in names:
        bench_launch()
    if "strategies" in names:
        bench_strategies()
    write_table()

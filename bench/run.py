"""Benchmarks of the vertical slice. Writes bench/results/<name>.json and bench/results/RESULTS.md.

    make bench                      # all benchmarks
    .venv/bin/python bench/run.py loop

1. `launch`: `launch vicuna` (local) from the call to the first optimizer step, and in total.
2. `loop`: tokens/s of our training loop (FinetuneRecipe: FSDP2 wrapping, exact token-mean
   loss, logging, cost) against a bare torch loop (plain model, AdamW, same micro-batches), both
   in one process with the same threads, same model, same batches, in the same run. The ratio is
   what matters on this noisy machine.
3. `strategies`: DDP / FSDP2 / ZeRO-2 / ZeRO-3 (+offload) on 2 Ray workers.
4. `checkpoint_io`: checkpoint MB/s to disk vs `dd` and to S3 (moto_server) vs boto3
   upload_file; training time lost to sync vs async saves.
5. `recovery`: on local Ray, kill -> first resumed step, and steps lost, without and with a
   spot notice.
6. `batching`: effective tokens/s and padding efficiency of HF Trainer (pad to max, pad to
   longest, group_by_length) against our loop's batching modes (bench/batching.py).
8. `autoscaler`: on the fake multi-node cluster, request -> workers ready, preemption ->
   training resumed, job end -> nodes released (bench/autoscaler.py).
7. `isoflop` (slow, ~12 min): model sizes at the local Cerebras-GPT job's FLOP budget; is the
   planner's 20 tokens/param choice at or near the best (bench/isoflop.py)?
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
        _local_ray()
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


def _local_ray() -> None:
    """A 2-CPU local Ray cluster in its own temp dir, shared by a benchmark's launches."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(dir="/tmp"),
        logging_level="warning",
    )


def bench_checkpoint_io(train_steps: int = 12, save_every: int = 3, threads: int = 2) -> dict:
    """Checkpoint throughput and what saving costs training, in one process (FSDP2, world 1),
    a ~25M-parameter Llama with its AdamW state (~300 MB):

    - save MB/s to local disk (DCP shards + sha256 manifest) against `dd` copying the same
      bytes on the same disk with fsync, and to S3 (moto_server on 127.0.0.1) against a plain
      boto3 `upload_file` of the same bytes;
    - a training loop saving every `save_every` steps to S3: wall time with no saves, sync saves
      and async saves (training blocks only while shards are written)."""
    import shutil
    import subprocess

    import boto3

    from orchestrator.checkpoint.io import Checkpointer
    from orchestrator.config.load import compose
    from orchestrator.training.model import build_model
    from orchestrator.training.strategies import build_strategy

    torch.set_num_threads(threads)
    _single_process_group()
    cfg = compose(
        "vicuna",
        "local",
        [
            "model.hidden_size=512",
            "model.intermediate_size=1376",
            "model.num_layers=8",
            "model.num_heads=8",
            "train.activation_checkpointing=false",
            "hardware.num_workers=1",
        ],
    )
    model = build_model(cfg.model, 4096)
    strategy = build_strategy(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 4096, (4, 256), generator=gen)

    def train_step() -> None:
        loss = strategy.model(input_ids=batch, labels=batch).loss
        strategy.backward(loss, True)
        strategy.step(1e-4, 1.0)

    train_step()  # optimizer state exists from here on
    write_s: list[float] = []

    def write_shards(folder: Path) -> None:  # DCP's own write, timed: the rest is our overhead
        t = time.perf_counter()
        strategy.write_checkpoint(folder)
        write_s.append(time.perf_counter() - t)

    from tests.faults import start_moto_server

    url, moto = start_moto_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=url,
    )
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    out: dict = {"n_params": n_params, "threads": threads}
    try:
        with tempfile.TemporaryDirectory(dir=str(REPO / "bench")) as d:  # the repo's disk
            d = Path(d)

            def saver(url: str, async_save: bool = False) -> Checkpointer:
                return Checkpointer(url, staging=d / "staging", keep_last=1, async_save=async_save)

            # 1. local disk: our save vs dd of the same bytes
            local = saver(str(d / "local"))
            for step in (1, 2, 3):
                local.save(step, write_shards, {"step": step})
            nbytes = local.stats.bytes[-1]
            mb = nbytes / 2**20
            save_s = min(local.stats.blocked_s)
            folder = d / "local" / "step_00000003"
            blob = d / "blob.bin"
            with blob.open("wb") as f:
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and p.name != "manifest.json":
                        f.write(p.read_bytes())
            dd_s = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run(
                    ["dd", f"if={blob}", f"of={d / 'dd.bin'}", "bs=4M", "conv=fsync"],
                    check=True,
                    capture_output=True,
                )
                dd_s.append(time.perf_counter() - t)
                (d / "dd.bin").unlink()
            out["checkpoint_mb"] = round(mb, 1)
            out["local_save_mb_per_s"] = round(mb / save_s, 1)
            out["dd_same_bytes_mb_per_s"] = round(mb / min(dd_s), 1)
            out["local_save_over_dd"] = round(min(dd_s) / save_s, 3)
            out["local_save_s"] = round(save_s, 3)
            out["of_which_dcp_write_s"] = round(min(write_s), 3)  # serialise + write + fsync

            # 2. S3: our save (upload + verify sizes + manifest) vs boto3 upload_file
            remote = saver("s3://bench/ckpt")
            for step in (1, 2):
                remote.save(step, write_shards, {"step": step})
            s3_save_s = min(remote.stats.blocked_s)
            up_s = []
            for i in range(2):
                t = time.perf_counter()
                s3.upload_file(str(blob), "bench", f"raw/blob{i}.bin")
                up_s.append(time.perf_counter() - t)
            out["s3_save_mb_per_s"] = round(mb / s3_save_s, 1)
            out["s3_upload_file_same_bytes_mb_per_s"] = round(mb / min(up_s), 1)
            out["s3_save_over_upload_file"] = round(min(up_s) / s3_save_s, 3)

            # 3. training blocked by saves to S3: none vs sync vs async
            def loop(mode: str) -> tuple[float, float]:
                ck = saver(f"s3://bench/{mode}", async_save=mode == "async")
                t = time.perf_counter()
                for step in range(1, train_steps + 1):
                    train_step()
                    if mode != "none" and step % save_every == 0:
                        ck.save(step, write_shards, {"step": step})
                ck.wait()
                return time.perf_counter() - t, sum(ck.stats.blocked_s)

            loops = {m: loop(m) for m in ("none", "sync", "async", "none")}  # none twice: warm
            none_s = loops["none"][0]
            for m in ("sync", "async"):
                wall, blocked = loops[m]
                out[f"train_{m}_wall_s"] = round(wall, 2)
                out[f"train_{m}_blocked_s"] = round(blocked, 2)
                out[f"train_{m}_overhead_vs_no_saves"] = round(wall / none_s - 1, 3)
            out["train_none_wall_s"] = round(none_s, 2)
            out["train_steps"], out["saves"] = train_steps, train_steps // save_every
            shutil.rmtree(d / "staging", ignore_errors=True)
    finally:
        moto.kill()
    _write("checkpoint_io", out)
    return out


def bench_recovery(steps: int = 40, every: int = 10) -> dict:
    """Preemptions on local Ray (2 workers, the local vicuna): a worker SIGKILLed 15 steps into
    a try (no warning), then SIGTERM (a spot notice) 8 steps into the next. Per interruption:
    seconds from the signal to the first resumed step completing, and steps lost (redone)."""
    import signal

    import ray

    from orchestrator.launch.run import launch
    from tests.faults import Chaos, rows_after

    with tempfile.TemporaryDirectory() as d:
        old = Path.cwd()
        os.chdir(d)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        _local_ray()
        chaos = Chaos(Path(d) / "runs/vicuna/chaos", [(signal.SIGKILL, 15), (signal.SIGTERM, 8)])
        chaos.start()
        try:
            res = launch(
                "vicuna",
                "local",
                [f"train.max_steps={steps}", f"checkpoint.every_steps={every}"],
                run_name="chaos",
            )
        finally:
            chaos.done.set()
            ray.shutdown()
            os.chdir(old)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows = rows_after(Path(res.run_dir) / "events.jsonl", 0)
        failures = [json.loads(x) for x in (Path(res.run_dir) / "failures.jsonl").open()]
        timeline = rows_after(Path(res.run_dir) / "timeline.jsonl", 0)
    assert res.stop_reason == "completed" and len(chaos.log) == 2, chaos.log
    out: dict = {"steps": steps, "checkpoint_every_steps": every, "interruptions": []}
    for hit, failure in zip(chaos.log, failures):
        done = max(r["step"] for r in rows if r["time"] < failure["time"])
        first = next(r for r in rows if r["time"] > failure["time"])
        setup = next(r for r in timeline if r["kind"] == "setup" and r["end"] > failure["time"])
        out["interruptions"].append(
            {
                "signal": hit["signal"],
                "at_step": hit["at_step"],
                "last_step_done": done,
                "resumed_at_step": first["step"],
                "steps_lost": done - (first["step"] - 1),
                "recovery_s": round(first["time"] - hit["time"], 2),
                "of_which_detect_s": round(failure["time"] - hit["time"], 2),
                "of_which_new_workers_s": round(setup["start"] - failure["time"], 2),
                "of_which_setup_and_load_s": round(setup["end"] - setup["start"], 2),
                "of_which_first_step_s": round(first["time"] - setup["end"], 2),
            }
        )
    step_s = [b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if b["step"] == a["step"] + 1]
    out["median_step_s"] = round(sorted(step_s)[len(step_s) // 2], 3)
    _write("recovery", out)
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
        if "modes" in r:
            keys = list(next(iter(r["modes"].values())))
            rows += ["| mode | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            rows += [
                f"| {name} | " + " | ".join(str(v.get(k, "")) for k in keys) + " |"
                for name, v in r["modes"].items()
            ]
            rows.append("")
            r = {k: v for k, v in r.items() if k != "modes"}
        if "pass_slots_per_s" in r:
            rates = r.pop("pass_slots_per_s")
            rows += ["| pass (rows x width) | forward+backward slots/s |", "|---|---|"]
            rows += [f"| {k} | {v} |" for k, v in rates.items()]
            rows.append("")
        if "interruptions" in r:
            keys = list(r["interruptions"][0])
            rows += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            rows += ["| " + " | ".join(str(i[k]) for k in keys) + " |" for i in r["interruptions"]]
            rows.append("")
        rows += ["| metric | value |", "|---|---|"]
        rows += [
            f"| {k} | {v} |"
            for k, v in r.items()
            if k not in ("bench", "when", "machine", "interruptions")
        ]
        rows.append("")
    (RESULTS / "RESULTS.md").write_text("\n".join(rows))


def bench_batching() -> dict:
    from bench.batching import bench_batching as run

    return run()


def bench_isoflop() -> dict:
    from bench.isoflop import bench_isoflop as run

    out = run()
    _write("isoflop", out)
    # The same sweep with one batch size for every model: only N and D change.
    fixed = run(batch_sequences=16)
    _write("isoflop_fixed_batch", fixed)
    return out


def bench_autoscaler() -> dict:
    from bench.autoscaler import bench_autoscaler as run

    out = run()
    _write("autoscaler", out)
    return out


def _isoflop_fixed() -> dict:
    from bench.isoflop import bench_isoflop as run

    return run(batch_sequences=16)


BENCHES = {
    "batching": bench_batching,
    "isoflop": bench_isoflop,
    "autoscaler": bench_autoscaler,
    "isoflop_fixed_batch": lambda: _write("isoflop_fixed_batch", _isoflop_fixed()),
    "launch": bench_launch,
    "loop": bench_loop,
    "strategies": bench_strategies,
    "checkpoint_io": bench_checkpoint_io,
    "recovery": bench_recovery,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            sys.exit(f"unknown benchmark {name!r}; choose from {list(BENCHES)}")
    # In-process torch.distributed first, before Ray owns this process.
    order = [
        "loop",
        "batching",
        "checkpoint_io",
        "launch",
        "strategies",
        "recovery",
        "isoflop",
        "isoflop_fixed_batch",
        "autoscaler",
    ]
    for name in order:
        if name in names:
            BENCHES[name]()
    write_table()

"""Calibrate the step-time model's kernel constants, and say how well they hold.

    python -m orchestrator.cost.calibration              # GPU kernel: fit + leave-one-out
    python -m orchestrator.cost.calibration --runs runs  # CPU kernel: refit from recorded runs

GPU: e_max, t_half, d_half of `eff = e_max t/(t + t_half) d/(d + d_half)` are fitted, in log
space, to the hardware FLOPs utilisation (HFU) of llm-foundry's MPT throughput table
(conf/benchmarks/llm_foundry_mpt_a100.csv: mosaicml/llm-foundry
scripts/train/benchmarking/README.md at 1ef7b4d21, 2023-05-24, A100-40GB and A100-80GB rows at
sequence lengths up to 8192). t is the tokens one GPU processes per micro-batch (micro-batch x
sequence length), d the model width. Three free constants; leave-one-out says how well they
predict a row they were not fitted on. Those runs used FlashAttention, packed sequences and
FSDP FULL_SHARD on one fast fabric: the constants transfer as the efficiency of the kernels;
communication, padding and attention kernels are modelled separately (steptime.py), and our
stack is taken at the same speed (kernel.frameworks.ours = 1.0, an assumption the GPU smoke
suite can check).

CPU: the local scale's kernel (e_max, t_half; d_half = 0: every local model is narrow) is
fitted on the mean step time of recorded local runs (their `result.json`), through the same
step-time model over their own batches. `bench/local_bills.py` runs every recipe, fits on half
of them and checks the other half.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.cost.steptime import Device, ModelShape, Regime
from orchestrator.paths import REPO_ROOT

BENCHMARKS = REPO_ROOT / "conf" / "benchmarks" / "llm_foundry_mpt_a100.csv"
BENCHMARK_SOURCE = (
    "mosaicml/llm-foundry scripts/train/benchmarking/README.md @1ef7b4d21 (2023-05-24)"
)
MAX_SEQ_LEN = 8192
"""Rows up to this sequence length: beyond it attention dominates, which MPT's triton kernels
and our FLOP count treat differently."""


@dataclass(frozen=True)
class BenchmarkRow:
    model: str
    seq_len: int
    gpus: int
    gpu: str
    hfu: float
    tokens: int
    """Per GPU per micro-batch."""
    d_model: int


def benchmark_rows(max_seq_len: int = MAX_SEQ_LEN) -> list[BenchmarkRow]:
    with BENCHMARKS.open() as f:
        return [
            BenchmarkRow(
                r["model"],
                int(r["seq_len"]),
                int(r["gpus"]),
                r["gpu"],
                float(r["hfu_pct"]) / 100.0,
                int(r["micro_batch"]) * int(r["seq_len"]),
                int(r["d_model"]),
            )  # fmt: skip
            for r in csv.DictReader(f)
            if int(r["seq_len"]) <= max_seq_len
        ]


def kernel_eff(params: Sequence[float] | np.ndarray, tokens: float, width: float) -> float:
    e, t_half, d_half = params
    return e * tokens / (tokens + t_half) * width / (width + d_half)


def least_squares_log(
    residuals: Callable[[np.ndarray], np.ndarray], x0: Sequence[float], iters: int = 200
) -> np.ndarray:
    """Minimise |residuals(exp(y))|^2 over y = log(params) (Levenberg-Marquardt, numerical
    Jacobian): every constant stays positive."""
    y = np.log(np.asarray(x0, dtype=float))
    lam = 1e-3

    def cost(v: np.ndarray) -> float:
        r = residuals(np.exp(v))
        return float(r @ r)

    current = cost(y)
    for _ in range(iters):
        r = residuals(np.exp(y))
        jac = np.empty((len(r), len(y)))
        for j in range(len(y)):
            h = np.zeros_like(y)
            h[j] = 1e-6
            jac[:, j] = (residuals(np.exp(y + h)) - r) / 1e-6
        a = jac.T @ jac
        g = jac.T @ r
        improved = False
        while lam < 1e10:
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            trial = cost(y + step)
            if trial < current:
                y, current, lam, improved = y + step, trial, lam / 3.0, True
                break
            lam *= 4.0
        if not improved or np.max(np.abs(step)) < 1e-10:
            break
    return np.exp(y)


def fit_kernel(rows: Sequence[BenchmarkRow], x0=(0.8, 1300.0, 650.0)) -> np.ndarray:
    """(e_max, t_half, d_half) minimising the squared log error of predicted vs measured HFU."""

    def res(p: np.ndarray) -> np.ndarray:
        return np.array([math.log(kernel_eff(p, r.tokens, r.d_model) / r.hfu) for r in rows])

    return least_squares_log(res, x0)


def leave_one_out(rows: Sequence[BenchmarkRow]) -> list[float]:
    """Relative error of each row's prediction from the constants fitted on all others."""
    full = fit_kernel(rows)
    errors = []
    for i, r in enumerate(rows):
        p = fit_kernel([x for j, x in enumerate(rows) if j != i], x0=full)
        errors.append(kernel_eff(p, r.tokens, r.d_model) / r.hfu - 1.0)
    return errors


# --------------------------------------------------------------------------- CPU runs
@dataclass
class RecordedRun:
    """A finished local run, with what the step-time model needs to predict its steps."""

    name: str
    job: str
    step_s: float
    """Measured mean seconds per optimizer step."""
    model: ModelShape
    regime: Regime
    device: Device
    passes: list
    """Planned passes of sampled steps (steps x ranks x passes)."""


def predicted_step_s(run: RecordedRun, e_max: float, t_half: float) -> float:
    from dataclasses import replace

    from orchestrator.cost import steptime

    kernel = replace(run.device.kernel, e_max=e_max, t_half=t_half, d_half=0.0)
    dev = replace(run.device, kernel=kernel)
    times = [steptime.step_s(run.model, run.regime, dev, ranks) for ranks in run.passes]
    return sum(times) / len(times)


def fit_cpu(runs: Sequence[RecordedRun], x0=(0.5, 256.0)) -> tuple[float, float]:
    """(e_max, t_half) of the CPU kernel that best predict the runs' mean step times."""

    def res(p: np.ndarray) -> np.ndarray:
        return np.array([math.log(predicted_step_s(r, p[0], p[1]) / r.step_s) for r in runs])

    e, t = least_squares_log(res, x0)
    return float(min(e, 1.0)), float(t)


def recorded_run(run_dir: Path, name: str | None = None) -> RecordedRun | None:
    """A local run's measured steps and planned passes (None: not a finished local run)."""
    import json

    from omegaconf import OmegaConf

    from orchestrator.config.schema import JobConfig
    from orchestrator.cost import estimator
    from orchestrator.cost.lengths import Lengths
    from orchestrator.data.prepared import DataManifest

    result = run_dir / "result.json"
    configs = sorted((run_dir / "config").glob("attempt-*.yaml"))
    meta = run_dir / "run.json"
    if not (result.exists() and configs and meta.exists()):
        return None
    res = json.loads(result.read_text())
    raw = OmegaConf.load(configs[-1])
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(JobConfig), raw))
    assert isinstance(cfg, JobConfig)
    if cfg.scale != "local" or cfg.data.format == "text" or len(res.get("step_s", [])) < 3:
        return None
    key = json.loads(meta.read_text()).get("data_key")
    manifest = run_dir.parent.parent / ".data" / str(key) / "manifest.json"
    if not manifest.exists():
        return None
    data = DataManifest.from_json(manifest.read_text())
    values = tuple(data.train_lengths())
    lengths = Lengths(values, len(values), "measured", str(manifest))
    steps = res["step_s"][1:]  # the first step pays one-off warm-up
    return RecordedRun(
        name=name or run_dir.name,
        job=cfg.job,
        step_s=sum(steps) / len(steps),
        model=estimator.model_shape(cfg, data.vocab_size),
        regime=estimator.regime(cfg),
        device=estimator.device(cfg),
        passes=estimator.step_passes(cfg, lengths, False, estimator.SAMPLED_STEPS),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.cost.calibration")
    ap.add_argument("--runs", help="a runs/ folder: refit the CPU kernel from its local runs")
    args = ap.parse_args(argv)
    rows = benchmark_rows()
    e, t_half, d_half = fit_kernel(rows)
    errors = np.abs(leave_one_out(rows))
    print(f"GPU kernel from {len(rows)} rows of {BENCHMARK_SOURCE} (seq <= {MAX_SEQ_LEN}):")
    print(f"  e_max={e:.4f} t_half={t_half:.1f} d_half={d_half:.1f} (3 free constants)")
    print(f"  leave-one-out |error|: median {np.median(errors):.1%}, worst {errors.max():.1%}")
    if args.runs:
        runs = [
            r
            for d in sorted(Path(args.runs).glob("*/*"))
            if d.is_dir() and (r := recorded_run(d)) is not None
        ]
        if not runs:
            print(f"no finished local runs under {args.runs}")
            return 1
        ce, ct = fit_cpu(runs)
        print(f"CPU kernel from {len(runs)} recorded runs: e_max={ce:.4f} t_half={ct:.1f}")
        for r in runs:
            pred = predicted_step_s(r, ce, ct)
            print(f"  {r.job:14s} {r.name:28s} step {r.step_s:.3f} s, predicted {pred:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a run reports as it trains and when it ends, one part of the trainer (training/loop.py).

Every `train.log_every_steps` rank 0 sends the steps since the last log (one all-reduce of
their sums) to the metrics sink: loss, lr, tokens/s, MFU and HFU, the meter's dollars, the
checkpoint interval and the node's CPU, memory and GPU. It prints a progress line with the ETA
and appends an event record (the ledger's input). At the end it logs the held-out metrics and
writes the run's result (RunResult) to the durable store, where the launcher reads it.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from orchestrator.config.errors import FatalError
from orchestrator.data.prepared import PreparedData
from orchestrator.plan.summary import pretrain_summary
from orchestrator.storage.layout import RESULT, EventRecord, RunResult

if TYPE_CHECKING:
    from orchestrator.training.loop import StepWork, Trainer


@dataclass
class LogWindow:
    """What the steps since the last log summed (per rank, on the device)."""

    loss: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    units: int = 0
    tokens: int = 0
    padded: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, work: StepWork) -> None:
        self.loss += work.loss_sum
        for k, v in work.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.units += work.units
        self.tokens += work.tokens
        self.padded += work.padded

    def reset(self) -> None:
        self.loss.zero_()
        self.sums.clear()
        self.units = self.tokens = self.padded = 0
        self.t0 = time.perf_counter()


class Progress:
    """The trainer's reporting: `count_flops` once the model is built, `start_system_metrics`
    on rank 0, `log_window` every log step, `finish` at the end (every rank)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.flops_per_token = 0.0
        self.peak_flops = 1.0
        self.system_metrics = None
        self.max_log_call_s = 0.0
        """The longest the metrics sink took to take one log call (it must never block)."""

    def count_flops(self, data: PreparedData) -> None:
        """Model FLOPs per trained token and the cluster's peak FLOP/s, for the `mfu` metric:
        the step-time model's count (cost/steptime.py pass_flops) for one example of the mean
        length: 6 N (or 4 N + 2 T for a frozen base) + 12 L d s per token, no padding and no
        recomputation (those are in `hfu`)."""
        from orchestrator.cost.steptime import ModelShape, Pass, Regime, pass_flops

        t = self.t
        cfg = t.cfg
        mean = (
            cfg.data.max_seq_len
            if cfg.data.format == "text"
            else data.train_tokens / max(1, len(data.train))
        )
        shape = ModelShape(t.n_params, t.n_trainable, cfg.model.num_layers,
                           cfg.model.hidden_size)  # fmt: skip
        one = Pass(slots=0, attn_sq=0.0, real=round(mean), real_sq=float(round(mean) ** 2))
        per_token = pass_flops(shape, Regime(method=cfg.train.method), one)[2] / max(1, one.real)
        hw = cfg.hardware
        if hw.accelerator == "cpu":
            peak = cfg.cost.cpu_peak_flops_per_worker * t.world
        else:
            peak = cfg.cost.gpus[hw.accelerator].peak_flops * hw.gpus_per_worker * t.world
        self.flops_per_token, self.peak_flops = per_token, peak

    def start_system_metrics(self) -> None:
        """CPU, memory, disk (and GPU memory) of this node, logged with the training metrics."""
        t = self.t
        try:
            from orchestrator.tracking.system import SystemSampler

            self.system_metrics = SystemSampler(t.storage.node_dir())
        except Exception as e:  # noqa: BLE001 - monitoring is optional, training is not
            t.say(f"warning: no system metrics: {e}")

    def log_window(
        self, window: LogWindow, lr: float, grad_norm: float, step_times: list[float]
    ) -> None:
        """Log the steps since the last log: one all-reduce of every sum; each value is the
        mean over the units (trained tokens, preference groups, rollout replies)."""
        t = self.t
        names = sorted(window.sums)
        totals = torch.stack([window.loss, *(window.sums[k] for k in names)]).float()
        dist.all_reduce(totals)
        per_unit = (totals / max(1, window.units)).tolist()
        check_finite("loss", per_unit[0], t.step, "fp32")  # the same value on every rank
        elapsed = time.perf_counter() - window.t0
        self._log_step(
            per_unit[0],
            lr,
            grad_norm,
            window.tokens / max(elapsed, 1e-9),
            step_times,
            padding_efficiency=window.tokens / max(1, window.padded),
            extra={**dict(zip(names, per_unit[1:], strict=True)), **t.objective.metrics()},
        )
        window.reset()

    def _log_step(
        self,
        loss: float,
        lr: float,
        grad_norm: float,
        tokens_per_s: float,
        step_times: list[float],
        padding_efficiency: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        t = self.t
        if t.rank != 0:
            return
        usd = t.usd_total()
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_token / self.peak_flops,
            # executed: padding slots and recomputation count too
            "hfu": tokens_per_s
            * self.flops_per_token
            / self.peak_flops
            / max(1e-9, padding_efficiency)
            * (4.0 / 3.0 if t.cfg.train.activation_checkpointing else 1.0),
            "padding_efficiency": padding_efficiency,
            "preemptions": float(t.preemptions),
            "app_failures": float(t.app_failures),
            "attempt": float(t.ctx.attempt),
            "cluster/workers": float(t.world),
            "checkpoint/interval_steps": float(t.cost.interval_steps(step_times[-20:])),
            **t.meter.metrics(
                t.tokens_so_far, t.cost.projected_usd(t.step, t.total_steps, step_times)
            ),
        }
        metrics.update(extra or {})
        if self.system_metrics is not None:
            metrics.update(self.system_metrics.maybe_sample(force=t.step == t.total_steps))
        t0 = time.perf_counter()
        t.metrics.log(metrics, step=t.step)
        self.max_log_call_s = max(self.max_log_call_s, time.perf_counter() - t0)
        recent = step_times[-20:]
        eta_s = (t.total_steps - t.step) * (sum(recent) / len(recent))
        say_line(
            f"step {t.step}/{t.total_steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"grad {grad_norm:.3f} | {tokens_per_s / 1e3:.1f}k tok/s | ${usd:.5f} | "
            f"ETA {timedelta(seconds=round(eta_s))}"
        )
        t.events.append(EventRecord(t.ctx.attempt, t.step, loss, usd, time.time()))

    def finish(self, step_times: list[float]) -> None:
        """The end of every run, on every rank (each one's peak memory is gathered): rank 0
        logs the held-out metrics and writes the run's result for the launcher."""
        t = self.t
        t.checkpoints.wait()
        peak_rss_mb = [0.0] * t.world
        dist.all_gather_object(
            peak_rss_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        peak_gpu_mb = [0.0] * t.world  # what the fit check estimated (cost/memory.py)
        on_gpu = t.device.type == "cuda"
        dist.all_gather_object(
            peak_gpu_mb, torch.cuda.max_memory_allocated(t.device) / 2**20 if on_gpu else 0.0
        )
        if t.rank != 0:
            return
        if t.eval_loss is not None:
            t.metrics.log({"eval_loss": t.eval_loss}, step=max(t.step, 1))
            say_line(f"eval loss {t.eval_loss:.4f} at step {t.step}")
        if t.eval_metrics:  # an objective's held-out metrics (reward/accuracy, dpo/accuracy)
            t.metrics.log(t.eval_metrics, step=max(t.step, 1))
            say_line("held out: " + ", ".join(f"{k} {v:.4f}" for k, v in t.eval_metrics.items()))
        pretrain = self._pretrain_summary()
        if pretrain:
            t.metrics.log(pretrain, step=max(t.step, 1))
            say_line(
                f"tokens: planned {pretrain['pretrain/tokens_planned']:,.0f}, trained "
                f"{pretrain['pretrain/tokens_trained']:,.0f} ({pretrain['pretrain/tokens_per_param']:.1f}"
                f" per parameter, {pretrain['pretrain/data_epochs']:.2f} passes over the corpus)"
            )
        result = RunResult(
            step=t.step,
            total_steps=t.total_steps,
            eval_loss=t.eval_loss,
            stop_reason=t.stop_reason,
            usd_total=t.usd_total(),
            tokens=t.tokens_so_far,
            n_params=t.n_params,
            n_trainable=t.n_trainable,
            attempt=t.ctx.attempt,
            strategy=t.cfg.train.strategy,
            method=t.cfg.train.method,
            batching=t.batching,
            peak_rss_mb_per_worker=peak_rss_mb,
            peak_gpu_mb_per_worker=peak_gpu_mb,
            checkpoint_s=t.checkpoints.blocked_s,
            checkpoint_persist_s=t.checkpoints.stats.persist_s,
            checkpoint_bytes=t.checkpoints.stats.bytes,
            checkpoints_committed=t.checkpoints.stats.committed,
            checkpoints_failed=t.checkpoints.stats.failed,
            preemptions=t.preemptions,
            lost_steps=t.meter.lost_steps,
            max_log_call_s=self.max_log_call_s,
            step_s=step_times,
            pretrain=pretrain,
        )
        t.timeline.flush()
        t.events.flush()
        t.run_store.write_text(RESULT, result.to_json())

    def _pretrain_summary(self) -> dict[str, float]:
        """Planned vs trained tokens and the scaling-law fit (pretraining runs only)."""
        t = self.t
        cfg = t.cfg
        if cfg.data.format != "text":
            return {}
        stream = t.batches.stream
        planned = (
            cfg.train.max_tokens
            or t.total_steps * cfg.train.global_batch_size * cfg.data.max_seq_len
        )
        epochs = stream.pos.epoch + stream.pos.file / max(1, len(stream.files) or 1)
        return pretrain_summary(t.n_params, planned, t.tokens_so_far, epochs)


def check_finite(what: str, value: float | None, step: int, precision: str) -> None:
    """A NaN or infinite loss or gradient norm stops the run as a failure, naming the step: it
    would train garbage and report "completed" (a corrupted shard once did). Under fp16 loss
    scaling an infinite gradient norm is a skipped step, not a failure.

    Raises:
        FatalError: on every rank (the values are all-reduced), so the launcher does not retry.
    """
    if value is None or math.isfinite(value):
        return
    if precision == "fp16" and what == "gradient norm":
        return
    raise FatalError(
        f"non-finite {what} ({value}) at step {step}: stopped (the weights, data or learning "
        "rate are broken; the last checkpoint before it is the resume point)"
    )


def say_line(msg: str) -> None:
    """Progress line to stdout. Not `print`: Ray Train patches print into logging, and the patched
    print shows every line twice on the driver."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()

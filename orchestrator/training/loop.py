"""The worker-side trainer: the parts every run has, assembled around an objective.

Runs inside each Ray Train worker (`training/entry.py` `train_fn`). Ray has already set up the
process group (gloo on CPU, NCCL on GPU); this file does everything else. A worker may be on a node that shares
no disk with the launcher: it gets its instructions in the RunContext (through Ray), its data and
checkpoints from the durable store, and reports there (storage contract: orchestrator/contract).
What is trained, and how one step goes, is the objective's (training/objective.py: SFT in
training/sft.py, the preference and RL objectives in rl/).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from orchestrator.checkpoint.io import node_leader
from orchestrator.checkpoint.notice import Notice, NoticeWatcher, doomed_tag
from orchestrator.checkpoint.policy import Interval
from orchestrator.config.errors import FatalError
from orchestrator.config.schema import JobConfig
from orchestrator.cost.ledger import read_timeline, redone_steps, restart_s
from orchestrator.cost.meter import CostMeter
from orchestrator.data.batching import resolve_mode
from orchestrator.data.prepared import PreparedData
from orchestrator.data.templates import IGNORE_INDEX
from orchestrator.objectives import spec as objective_spec
from orchestrator.storage.durable import FolderStore
from orchestrator.storage.layout import (
    DATA_CACHE,
    EVENTS,
    EXPORT,
    EXPORT_STAGING,
    TIMELINE,
    RunContext,
    StopReason,
    TimelineRecord,
    run_store,
)
from orchestrator.storage.streams import RecordStream
from orchestrator.training.checkpoints import CheckpointPart
from orchestrator.training.cost_control import Control, CostControl
from orchestrator.training.elastic import Regrow, grow_target, spare_workers
from orchestrator.training.methods import count_trainable
from orchestrator.training.metrics_sink import MetricsSink
from orchestrator.training.model import build_meta_model, pretrained_state_dict
from orchestrator.training.objective import Objective
from orchestrator.training.progress import LogWindow, Progress, check_finite, say_line
from orchestrator.training.schedule import lr_at, warmup_steps_for
from orchestrator.training.strategies import build_strategy
from orchestrator.urls import is_object_store, local_path


@dataclass
class StepWork:
    """What one optimizer step (or PPO iteration) did, for the logs and the meter."""

    loss_sum: torch.Tensor
    """This rank's loss summed over its units (on the device: no sync per step)."""
    units: int
    """What the loss is a mean over, all ranks: trained tokens, preference groups, replies."""
    tokens: int
    """Tokens processed on all ranks (the tokens/s and token counters)."""
    padded: int
    """Token slots including padding, all ranks (padding efficiency)."""
    grad_norm: float
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further per-rank sums over the same units, logged as means (e.g. reward/accuracy)."""


class Preempted(RuntimeError):
    """Raised by every rank after the emergency checkpoint of a spot notice: the launcher
    restarts the run (a preemption, not an application error)."""


class Trainer:
    """Train the job's objective on any strategy, CPU (gloo) or GPU.

    The parts:
        - Data: the prepared data from the durable store (fetched once per node from S3).
        - Strategies (`train.strategy`): ddp, fsdp (FSDP2 `fully_shard` per decoder layer, mixed
          precision, CPU offload), deepspeed (ZeRO 0-3, optimizer/parameter offload); AdamW,
          warmup + cosine/linear/constant LR, global grad-norm clipping, fp32 or bf16.
        - Checkpoints with a manifest; `resume: auto` continues from the newest complete one with
          the same data order and MLflow run (DCP checkpoints reshard to a new worker count).
        - Cost control (training/cost_control.py): the meter, the budget cap that saves and
          stops before a step would cross it, the checkpoint interval and spot notices.
        - The metrics sink (training/metrics_sink.py): MLflow, the tail replayed on resume.
        - Progress (training/progress.py): each log window's metrics (loss, tokens/s, MFU,
          dollars), the progress line with its ETA, and at the end the run's result.
        - The objective (training/objective.py; its spec names it): batches, model, the step,
          held-out evaluation, export and its own checkpoint state. The trainer calls nothing
          of it but that interface.

    Raises:
        RuntimeError: `checkpoint.resume: must` without a checkpoint; a checkpoint written by
            another strategy, or by DeepSpeed with another worker count.
    """

    def __init__(self, cfg: JobConfig, ctx: RunContext, objective: type[Objective] | None = None):
        self.cfg = cfg
        self.ctx = ctx
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.step = 0
        self.tokens_so_far = 0
        self.stop_reason = StopReason.COMPLETED
        self.preemptions = 0
        self.app_failures = 0
        self.meter = CostMeter(ctx, cfg.budget)
        self.notice: Notice | None = None
        self.eval_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self._t_created = time.time()
        self._setup_s = 0.0
        self._last_grow_note = ""
        self.storage = ctx.storage
        self.run_store = run_store(ctx.storage)
        self.metrics = MetricsSink(ctx.tracking_uri, ctx.mlflow_run_id, self.storage.node_dir,
                                   self.run_store, say=self.say)  # fmt: skip
        # Rank 0 reports the timeline and events to the durable store (the ledger's input).
        self.timeline = RecordStream(self.run_store, TIMELINE, ctx.flush_s)
        self.events = RecordStream(self.run_store, EVENTS, ctx.flush_s)
        self.progress = Progress(self)
        if objective is None:  # the one the job's objective spec names (imported here, lazily)
            objective = objective_spec(cfg.train.objective).recipe_class()
        self.objective = objective(self)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = worker_device()
        torch.set_num_threads(cfg.train.num_threads_per_worker)
        torch.manual_seed(cfg.train.seed + self.rank)

        data = fetch_prepared(self.storage, self.ctx.data_url)
        self.data = data
        self.batching = resolve_mode(
            cfg.train.batching, cfg.hardware.accelerator, cfg.model.attn_implementation
        )
        if cfg.data.format == "text":  # pretraining: packed rows streamed from the corpus
            self.batching = "streamed text rows"
        self.batches = self.objective.step_batches(data)
        if cfg.train.max_steps is not None:
            self.total_steps = cfg.train.max_steps
        elif cfg.data.format == "text":
            if cfg.train.max_tokens is None:
                raise RuntimeError("data.format=text needs train.max_tokens or train.max_steps")
            step_tokens = cfg.train.global_batch_size * cfg.data.max_seq_len
            self.total_steps = math.ceil(cfg.train.max_tokens / step_tokens)
        else:
            self.total_steps = math.ceil(cfg.train.epochs * self.batches.steps_per_epoch)
        if not objective_spec(cfg.train.objective).trains:
            self.total_steps = 0  # an evaluation: no step; eval (and export) at the end
        self.warmup = warmup_steps_for(
            self.total_steps, cfg.optim.warmup_ratio, cfg.optim.warmup_steps
        )
        self._setup_model(data)

    def _setup_model(self, data: PreparedData) -> None:
        cfg = self.cfg
        self.base_ref = cfg.model.pretrained  # as the launcher named it (a durable URL, an id)
        self.base_digest = self.ctx.model_digests.get("model.pretrained", "")
        if cfg.model.pretrained and is_durable(cfg.model.pretrained):
            cfg.model.pretrained = str(
                self.fetch_pretrained(cfg.model.pretrained, self.base_digest)
            )
        # A pretrained base under FSDP/DDP is built on the meta device on every rank and read
        # from disk once (rank 0) then broadcast into place; not at all when a checkpoint will
        # overwrite it. DeepSpeed and 8-bit bases load through transformers (ZeRO-3 straight
        # into its partitions).
        deferred = self.objective.loads_base_deferred()
        if deferred:
            with torch.device("meta"):
                model = self.objective.wrap(build_meta_model(cfg.model, data.vocab_size))
        else:
            model = self.objective.build(data)
        self.n_trainable, self.n_params = count_trainable(model)  # before wrapping: global counts
        self.progress.count_flops(data)
        self.strategy = build_strategy(model, cfg)
        self.model = self.strategy.model
        self.checkpoints = CheckpointPart(
            cfg, self.ctx, self.strategy, self.metrics, self.rank, self.world,
            (self.base_ref, self.base_digest), self.say,
        )  # fmt: skip
        resuming = cfg.checkpoint.resume != "never" and bool(self.checkpoints.complete_steps())
        # A LoRA/adapter checkpoint holds only what was trained: the base is loaded first.
        holds_all = self.checkpoints.holds == "all"
        if deferred and not (resuming and holds_all):
            self._load_pretrained(data)
        self.interval = Interval(
            cfg.checkpoint.interval,
            cfg.checkpoint.every_steps,
            cfg.checkpoint.every_minutes,
            cfg.checkpoint.mtbf_hours,
        )
        self.preemptions = self.ctx.preemptions_before
        self.app_failures = self.ctx.app_failures_before
        if not self._resume() and deferred and resuming and holds_all:  # none verified after all
            self._load_pretrained(data)
        self.watcher = NoticeWatcher(poll_s=cfg.checkpoint.notice_poll_s).start()
        self.cost = CostControl(
            self.meter,
            self.interval,
            notice=self.watcher.notice,
            save_blocked_s=lambda: self.checkpoints.stats.blocked_s,
            say=self.say,
            started_at=self._t_created,
            checkpoint_s=self.checkpoints.blocked_s,
            preemptions=self.preemptions,
        )
        if self.rank == 0:
            # Work after the checkpoint we resumed from (and earlier redone work) was paid for
            # and is lost: price it now, so `cost/usd_wasted` is right from the first step.
            timeline = read_timeline(self.run_store)
            redone = redone_steps(timeline, resumed_at=self.step)
            self.meter.set_lost(len(redone), sum(r["end"] - r["start"] for r in redone))
            self.progress.start_system_metrics()
            self._record("setup", self._t_created, time.time())
            # What a restart costs (the grow-back rule): this one, from the last record of the
            # worker group before (else this setup alone).
            mine = {"attempt": self.ctx.attempt, "kind": "setup", "start": self._t_created,
                    "end": time.time()}  # fmt: skip
            self._setup_s = restart_s([*timeline, mine]) or 0.0
            self.metrics.open(resumed_step=self.step)
            self.say(
                f"{cfg.train.strategy} / {cfg.train.method}: {self.n_trainable:,} of "
                f"{self.n_params:,} parameters trainable, {self.world} workers, "
                f"{self.batching} batching"
            )
        self.objective.ready()

    def fetch_pretrained(self, url: str, digest: str = "") -> Path:
        """A pretrained folder of the durable store on this node (`fetch_pretrained`)."""
        return fetch_pretrained(self.storage, url, digest)

    def _load_pretrained(self, data: PreparedData) -> None:
        """Rank 0 reads the base (and initialises the method's weights); every rank receives its
        part by broadcast."""
        state = None
        if self.rank == 0:
            state = pretrained_state_dict(self.cfg.model, data.vocab_size, self.objective.wrap)
            self.say(f"loaded {self.cfg.model.pretrained} on rank 0; broadcasting")
        self.strategy.load_full_state_dict(state)
        del state

    def _resume(self) -> bool:
        """Continue from the newest complete checkpoint (the checkpoint part reads the shards);
        True when one was loaded."""
        restored = self.checkpoints.restore()
        if restored is None:
            return False
        self.step, self.tokens_so_far = restored.step, restored.tokens
        if hasattr(self.batches, "load_state_dict"):  # a text stream: its exact read position
            if "data_stream" not in restored.state:
                raise RuntimeError(f"{restored.path}: no data_stream position in its manifest")
            self.batches.load_state_dict(restored.state["data_stream"])
        self.objective.load_state(restored.state, restored.path)
        self.checkpoints.report_fetch(restored, self.run_store)
        return True

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg = self.cfg
        window = LogWindow(torch.zeros((), device=self.device))  # on the device: no sync
        step_times: list[float] = []
        if not objective_spec(cfg.train.objective).trains:
            self.say(f"{cfg.train.objective}: nothing to train; evaluating")
        elif self.step >= self.total_steps:
            self.say(f"nothing to do: already at step {self.step} of {self.total_steps}")
        control = self._control(step_times)  # a resumed run may have spent its budget already
        while self.step < self.total_steps:
            if control.budget_stop:
                self.stop_reason = StopReason.BUDGET
                break
            t0 = time.perf_counter()
            lr = lr_at(
                self.step,
                peak_lr=cfg.optim.lr,
                total_steps=self.total_steps,
                warmup=self.warmup,
                schedule=cfg.optim.schedule,
                min_lr_ratio=cfg.optim.min_lr_ratio,
            )
            work = self.objective.step(lr)
            check_finite("gradient norm", work.grad_norm, self.step + 1, cfg.train.precision)
            window.add(work)
            self._record("step", t0 + self._wall_offset(), time.time(), step=self.step + 1)
            self.step += 1
            self.tokens_so_far += work.tokens
            step_times.append(time.perf_counter() - t0)
            if self.step % cfg.train.log_every_steps == 0 or self.step == self.total_steps:
                self.progress.log_window(window, lr, work.grad_norm, step_times)
            control = self._control(step_times)
            if control.notice:
                self._leave_on_notice()
            if control.save or self.step == self.total_steps:
                self.save_checkpoint()
                if cfg.hardware.elastic and self.step < self.total_steps:
                    self._grow_back(step_times)
        self._end(step_times)

    def _leave_on_notice(self) -> None:
        """A spot notice (here or on another rank): save if the save fits the notice window,
        then raise Preempted (the launcher resumes from the newest checkpoint)."""
        self.stop_reason = StopReason.PREEMPTED
        window = self.cfg.checkpoint.notice_window_s
        source = self.notice.source if self.notice else "another rank"
        if self.notice is not None:  # this node goes: the launcher drains it first
            source += " " + doomed_tag(_node_id(), self.notice.received_at + window)
        if self.checkpoints.save_fits(window):
            self.save_checkpoint(emergency=True)
            self.checkpoints.wait()
            raise Preempted(
                f"spot notice ({source}): saved step {self.step}; the launcher resumes from it"
            )
        # It would be cut off mid-write: the interval checkpoint is the resume point.
        self.checkpoints.wait()
        last = self.checkpoints.last_step
        self.say(
            f"spot notice: a save takes longer than the {window:.0f} s notice window; "
            f"no emergency save, the run resumes from step {last}"
        )
        raise Preempted(
            f"spot notice ({source}): no time to save step {self.step}; the launcher resumes "
            f"from step {last}"
        )

    def _grow_back(self, step_times: list[float]) -> None:
        """An elastic run below its maximum, right after a checkpoint: if the cluster has room
        for more nodes' workers and growing pays (training/elastic.py), every rank waits for
        the checkpoint to be complete and raises Regrow (the launcher restarts on them)."""
        hw = self.cfg.hardware
        if self.world >= hw.num_workers:
            return
        target, why = 0, ""
        if self.rank == 0:
            import ray

            recent = step_times[-20:]
            target, why = grow_target(
                world=self.world, max_workers=hw.num_workers, per_node=hw.workers_per_node,
                spare=spare_workers(ray.available_resources(), self.ctx.worker_resources),
                mode=hw.grow_back, steps_left=self.total_steps - self.step,
                step_s=sum(recent) / max(1, len(recent)), restart_s=self._setup_s,
            )  # fmt: skip
        if self._agree_max([target])[0]:
            self.checkpoints.wait()
            self.say(why)
            raise Regrow(f"step {self.step} saved; {why}")
        if why and why != self._last_grow_note:
            self.say(why)
            self._last_grow_note = why

    def _end(self, step_times: list[float]) -> None:
        """Stopped by the budget: a last checkpoint (eval and export would spend past the cap).
        Completed: held-out evaluation and the export. Then the run's result."""
        self.eval_loss = None
        if self.stop_reason == StopReason.BUDGET:
            self.save_checkpoint()
        else:
            t = time.time()
            self.eval_loss = self.objective.evaluate()
            self.eval_metrics = dict(self.objective.eval_metrics)
            if self.cfg.export.enabled:
                self.objective.export()
            self._record("eval", t, time.time())
        self.progress.finish(step_times)

    def _control(self, step_times: list[float]) -> Control:
        """What every rank does next (training/cost_control.py), agreed in the step's one
        control collective (a 3-flag MAX all-reduce)."""
        self.cost.preemptions = self.preemptions
        control, self.notice = self.cost.decide(
            rank=self.rank,
            step=self.step,
            last_save_step=self.checkpoints.last_step,
            since_save_s=self.checkpoints.since_save_s,
            step_times=step_times,
            agree=self._agree_max,
        )
        return control

    def _agree_max(self, flags: list[int]) -> list[int]:
        t = torch.tensor(flags, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(x) for x in t.tolist()]

    # ------------------------------------------------------------------ cost
    def usd_total(self) -> float:
        return self.meter.spent().usd

    def _wall_offset(self) -> float:
        """time.time() - time.perf_counter(): turns perf_counter stamps into wall-clock time."""
        return time.time() - time.perf_counter()

    def _record(self, kind: str, start: float, end: float, step: int | None = None) -> None:
        """One line of the timeline the ledger splits the bill with (rank 0)."""
        if self.rank != 0:
            return
        self.timeline.append(
            TimelineRecord(
                self.ctx.attempt, os.getpid(), kind, step, start, end, _node_id(), self.world
            )
        )

    # ------------------------------------------------------------------ logging
    def say(self, msg: str) -> None:
        """Print on rank 0."""
        if self.rank == 0:
            say_line(msg)

    # ------------------------------------------------------------------ checkpoint / eval / export
    def save_checkpoint(self, emergency: bool = False) -> None:
        """Save this step (the checkpoint part writes it); the timeline and events up to it
        go to the durable store with it."""
        spe = self.batches.steps_per_epoch
        more: dict[str, Any] = {"data_position": {
            "epoch": self.step // spe, "step_in_epoch": self.step % spe, "seed": self.cfg.train.seed,
        }}  # fmt: skip
        if hasattr(self.batches, "state_dict"):  # text stream: where step self.step starts
            more["data_stream"] = self.batches.state_dict()
        more.update(self.objective.state())
        state = self.checkpoints.manifest(
            self.step, self.tokens_so_far, self.usd_total(), emergency, **more
        )
        t = time.time()
        self.checkpoints.save(self.step, state)
        self._record("checkpoint", t, time.time(), step=self.step)
        self.timeline.flush()
        self.events.flush()

    def export_dir(self) -> Path:
        """Where rank 0 writes the export: in place in a folder store, else node scratch."""
        if isinstance(self.run_store, FolderStore):
            return self.run_store.local_path(EXPORT)
        return self.storage.node_dir(EXPORT_STAGING)

    def publish_export(
        self, out: Path, kind: str, hashed: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Rank 0: the export's model manifest (last), then the folder into the durable store
        (a folder store holds it in place already)."""
        from orchestrator.checkpoint.exports import model_digest, write_model_manifest

        manifest = write_model_manifest(
            out, kind, hashed, extra={"base": {"ref": self.base_ref, "digest": self.base_digest}}
        )
        if not isinstance(self.run_store, FolderStore):
            self.run_store.upload_dir(out, EXPORT)
        self.say(
            f"exported ({kind}, {model_digest(manifest)[:19]}...): {self.run_store.url}/{EXPORT}"
        )

    def run(self) -> None:
        """setup, train (eval and export at the end), cleanup whatever happens."""
        self.setup()
        try:
            self.train()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if hasattr(self, "watcher"):
            self.watcher.stop()
        if hasattr(self, "checkpoints"):
            self.checkpoints.wait()
        self.timeline.flush()
        self.events.flush()
        self.metrics.close()
        if dist.is_initialized():
            dist.barrier()  # avoids gloo aborting at exit (docs/facts/stack.md, Ray)


def fetch_prepared(storage, data_url: str) -> PreparedData:
    """The prepared data from the durable store: opened in place from a folder store; from
    S3, fetched once per node by its leader into node scratch (verified by sha256)."""
    from orchestrator.data.publish import fetch_data

    cache = storage.node_shared_dir(DATA_CACHE)
    leader, _ = node_leader()
    data = fetch_data(data_url, cache, leader) if leader else None
    if dist.is_initialized():
        dist.barrier()
    if data is None:
        data = fetch_data(data_url, cache, leader=False)
    if data is None:
        raise RuntimeError(f"no prepared data from {data_url} on this node")
    return data


def fetch_pretrained(storage, url: str, digest: str = "") -> Path:
    """A pretrained folder of the durable store on this node: from S3 downloaded once per
    node into its scratch; verified against its model manifest and the digest the launcher
    recorded by each node's leader (the other ranks wait, then use it)."""
    from orchestrator.training.bases import fetch

    cache = storage.node_shared_dir("pretrained")
    leader, _ = node_leader()
    on_leaders(lambda: fetch(url, cache, digest or None), leader, what=f"loading {url}")
    return fetch(url, cache, digest or None, verify=False)


def on_leaders(fn, leader: bool, what: str) -> Any:
    """Run `fn` on each node's leader while the node's other ranks wait; a failure on any
    leader is raised on every rank (instead of leaving the others waiting in a collective
    until its timeout). A verification failure (ValueError: BadModel, BadManifest) is a
    FatalError: no retry would pass it."""
    out, err = None, None
    if leader:
        try:
            out = fn()
        except ValueError as e:
            err = ("fatal", str(e))
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            err = ("error", f"{type(e).__name__}: {e}")
    errs: list[Any] = [err]
    if dist.is_initialized():
        errs = [None] * dist.get_world_size()
        dist.all_gather_object(errs, err)
    first = next((e for e in errs if e is not None), None)
    if first is not None:
        kind, msg = first
        raise (FatalError if kind == "fatal" else RuntimeError)(f"{what}: {msg}")
    return out


def is_durable(ref: str) -> bool:
    """A model reference in a durable store (an s3:// prefix or an existing folder), not a
    Hugging Face hub id."""
    return is_object_store(ref) or Path(local_path(ref)).is_dir()


def train_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def base_dtype(cfg: JobConfig) -> torch.dtype:
    """The dtype every rank reads a whole pretrained model in (the paths that do not load it
    once and broadcast: DeepSpeed, 8-bit bases, preference and RL stages). A frozen base
    (LoRA, adapters) and a DeepSpeed model (its engine casts the module to bf16 and keeps fp32
    masters in the optimizer) are read in the training precision: a 7B model is 14 GB per
    rank, not 28. A full fine-tune under DDP keeps fp32 weights (autocast computes in bf16)."""
    if cfg.train.precision != "bf16":
        return torch.float32
    if cfg.train.method != "full" or cfg.train.strategy == "deepspeed":
        return torch.bfloat16
    return torch.float32


def _unwrapped(model):
    """The HF (or peft) model inside a DDP wrapper or a DeepSpeed engine."""
    return getattr(model, "module", model)


def worker_device() -> torch.device:
    """This worker's device: Ray Train's (the GPU it was given), else cuda or cpu."""
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - not in a Ray Train worker
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def to_device(mb: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A micro-batch on `device`. To a GPU: through pinned host memory, without blocking (the
    copy overlaps the previous micro-batch's compute)."""
    if device.type == "cuda":
        return {
            k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in mb.items()
        }
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in mb.items()}


def loss_sum(model, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over trained (label != -100) positions."""
    # Padded batches carry an attention mask; packed ones carry per-example position ids.
    # No KV cache: with one, transformers does not look for packed sequences at all.
    inputs = {k: v for k, v in mb.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    # Shift the labels, not the logits: slicing logits[:, :-1] would copy all of them
    # (rows x width x vocab floats) once more per micro-batch.
    labels = F.pad(mb["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def forward_backward(
    model, strategy, micro_batches: list[dict[str, torch.Tensor]], n_targets: int, world: int,
    device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """The forward and backward passes of one optimizer step on this rank. Returns this rank's
    summed loss, on `device` (no host sync)."""
    total = torch.zeros((), device=device)
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, device)
        with strategy.autocast():
            mb_loss_sum = loss_sum(model, mb)
        # Gradients are averaged over ranks: scale so the result is the exact mean over every
        # trained token of the global batch, whatever the split.
        strategy.backward(
            mb_loss_sum * world / max(1, n_targets),
            last_micro_batch=i == len(micro_batches) - 1,
        )
        total += mb_loss_sum.detach().float()
    return total


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker (benchmarks drive the recipe directly)
        return ""

"""The trainer's checkpoint part: what a checkpoint's manifest holds, saving one, and resuming
from the newest complete one.

The files are the strategy's (its shards) and the Checkpointer's (orchestrator/checkpoint/io.py:
staging, async upload, the manifest committed last, retention). This part decides what goes in
the manifest besides them (step, tokens, dollars, the MLflow run, the config hash, the strategy
and worker count, the base the shards apply to, the data position and the objective's own
state), refuses a checkpoint this run cannot read, and reports what each rank fetched on
resume. The trainer owns when to save (cost control) and what a step is (the objective).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from orchestrator.checkpoint.io import Checkpointer
from orchestrator.checkpoint.manifest import FILES_KEY
from orchestrator.checkpoint.resume import (
    BASE_KEY,
    CONFIG_HASH_KEY,
    COST_KEY,
    HOLDS_KEY,
    RUN_ID_KEY,
    STEP_KEY,
    STRATEGY_KEY,
    TOKENS_KEY,
    WORLD_KEY,
    resume_problem,
)
from orchestrator.config.errors import FatalError
from orchestrator.config.schema import JobConfig
from orchestrator.storage.layout import CKPT_CACHE, CKPT_STAGING, METRICS_TAIL, RESUMES, RunContext


@dataclass(frozen=True)
class Restored:
    """The checkpoint a run resumed from: its folder on this node and its manifest."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state[STEP_KEY])

    @property
    def tokens(self) -> int:
        return int(self.state.get(TOKENS_KEY, 0))


class CheckpointPart:
    """Save and restore one run's checkpoints (built once the strategy exists).

    Args:
        strategy: writes and reads the shards (`write_checkpoint`, `read_checkpoint`).
        metrics: the metrics sink: its unsent tail goes into each checkpoint (rank 0) and is
            read back on resume.
        base: the pretrained base as the launcher named it and its digest (a LoRA/adapter
            checkpoint holds only the trained parameters: resuming on another base is refused).
    """

    def __init__(
        self,
        cfg: JobConfig,
        ctx: RunContext,
        strategy,
        metrics,
        rank: int,
        world: int,
        base: tuple[str | None, str],
        say: Callable[[str], None],
    ) -> None:
        self.cfg, self.ctx, self.strategy, self.metrics = cfg, ctx, strategy, metrics
        self.rank, self.world, self.say = rank, world, say
        self.base_ref, self.base_digest = base
        self.storage = ctx.storage
        self.checkpointer = Checkpointer(
            self.storage.checkpoint_url,
            staging=self.storage.node_dir(CKPT_STAGING),
            keep_last=cfg.checkpoint.keep_last,
            keep_every=cfg.checkpoint.keep_every,
            async_save=cfg.checkpoint.async_save,
        )
        self.blocked_s: list[float] = []
        """Seconds training was blocked by each save (the run result's checkpoint_s)."""
        self.last_step = 0
        self._t_last = time.perf_counter()

    @property
    def holds(self) -> str:
        """What the shards hold: every parameter, or only the trained ones (LoRA, adapters)."""
        return "trainable" if getattr(self.strategy, "trainable_only", False) else "all"

    @property
    def since_save_s(self) -> float:
        return time.perf_counter() - self._t_last

    @property
    def stats(self):
        return self.checkpointer.stats

    def save_fits(self, window_s: float) -> bool:
        """Would a save finish within `window_s` (a spot notice's window)?"""
        return self.checkpointer.save_fits(window_s)

    def wait(self) -> None:
        """Until the background write and upload of the last save are done."""
        self.checkpointer.wait()

    # ------------------------------------------------------------------ resume
    def complete_steps(self) -> list[int]:
        """The steps of complete checkpoints in the durable store (collective: rank 0 lists)."""
        steps = [self.checkpointer.store.complete_steps() if self.rank == 0 else None]
        if dist.is_initialized():
            dist.broadcast_object_list(steps, src=0)
        return steps[0] or []

    def restore(self) -> Restored | None:
        """Read the newest complete checkpoint into the strategy (and the metrics tail), per
        `checkpoint.resume`; None when there is none to read (or resume: never).

        Raises:
            RuntimeError: `resume: must` and no complete checkpoint.
            FatalError: a checkpoint this strategy, worker count or base cannot read.
        """
        mode = self.cfg.checkpoint.resume
        found = None
        if mode != "never":
            found = self.checkpointer.load_latest(
                self._read_checked, self.storage.node_dir(CKPT_CACHE),
                getattr(self.strategy, "checkpoint_files", None),
            )  # fmt: skip
        if mode == "must" and found is None:
            raise RuntimeError(
                f"checkpoint.resume=must but {self.storage.checkpoint_url} has no complete "
                "checkpoint"
            )
        if found is None:
            return None
        restored = Restored(*found)
        if restored.state.get(CONFIG_HASH_KEY) != self.ctx.config_hash:
            self.say(
                f"warning: the config changed since {restored.path.name}; the new config wins "
                "(weights, optimizer and data position come from the checkpoint)"
            )
        self.say(
            f"resumed from {self.checkpointer.store.url}/{restored.path.name} at step "
            f"{restored.step}"
        )
        self.last_step, self._t_last = restored.step, time.perf_counter()
        return restored

    def _read_checked(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint this strategy/worker count cannot read, then read it. `path` holds
        only the files this rank reads (fetched and verified); `state` is the manifest."""
        problem = resume_problem(state, self.cfg, self.world, self.base_digest, self.holds)
        if problem:  # the launcher checks this before starting; here in case it changed since
            raise FatalError(f"{path}: {problem}")
        self.strategy.read_checkpoint(path)
        if self.rank == 0:
            self.metrics.read_tail(path)

    def report_fetch(self, restored: Restored, run_store) -> None:
        """What each rank fetched and verified of the checkpoint it resumed from (collective):
        printed, and a line of the run's resumes.jsonl."""
        mine = asdict(self.checkpointer.fetch_stats)
        mine.pop("files")
        mine["rank"] = self.rank
        ranks: list[Any] = [mine]
        if dist.is_initialized():
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        if self.rank != 0:
            return
        total = sum(f["bytes"] for f in restored.state.get(FILES_KEY, {}).values())
        most = max(r["fetched_bytes"] for r in ranks)
        self.say(
            f"resume: checkpoint of {total / 1e6:.1f} MB; the most one rank fetched "
            f"{most / 1e6:.1f} MB, verified {max(r['verified_bytes'] for r in ranks) / 1e6:.1f} MB"
        )
        run_store.append_lines(RESUMES, [json.dumps({
            "attempt": self.ctx.attempt, "step": restored.step, "checkpoint_bytes": total,
            "ranks": ranks,
        })])  # fmt: skip

    # ------------------------------------------------------------------ save
    def manifest(
        self, step: int, tokens: int, usd: float, emergency: bool, **more: Any
    ) -> dict[str, Any]:
        """What a checkpoint's manifest holds besides its files; `more`: the data position and
        the objective's own state."""
        return {
            STEP_KEY: step,
            TOKENS_KEY: tokens,
            COST_KEY: usd,
            RUN_ID_KEY: self.ctx.mlflow_run_id,
            CONFIG_HASH_KEY: self.ctx.config_hash,
            STRATEGY_KEY: self.cfg.train.strategy,
            WORLD_KEY: self.world,
            "attempt": self.ctx.attempt,
            "emergency": emergency,
            HOLDS_KEY: self.holds,
            BASE_KEY: {"ref": self.base_ref, "digest": self.base_digest},
            **more,
        }

    def save(self, step: int, state: dict[str, Any]) -> float:
        """Save step `step` with manifest `state`; the seconds training was blocked."""
        seconds = self.checkpointer.save(step, self._write, state)
        self.blocked_s.append(seconds)
        self.last_step, self._t_last = step, time.perf_counter()
        how = "emergency checkpoint (spot notice)" if state.get("emergency") else "checkpoint"
        where = f"{self.checkpointer.store.url}/step_{step:08d}"
        if self.cfg.checkpoint.async_save and not state.get("emergency"):
            self.say(
                f"{how} step {step}: training blocked {seconds:.2f} s; writing and "
                f"uploading in the background to {where}"
            )
        else:
            self.say(f"{how} saved: {where} ({seconds:.2f} s)")
        return seconds

    def _write(self, target, group):
        """The strategy's shards, plus (rank 0) the metrics MLflow does not have yet: committed
        with the manifest, they reach MLflow even if this node is gone before it sends them."""
        future = self.strategy.write_checkpoint(target, group)
        tail = self.metrics.tail_bytes() if self.rank == 0 else None
        if tail:
            target.write_bytes(METRICS_TAIL, tail)
        return future

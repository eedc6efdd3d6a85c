"""What a training objective brings to the trainer, and nothing more.

The trainer (training/loop.py `Trainer`) assembles the parts every run has: the prepared data,
the strategy that shards the model, checkpoints and resume, cost control (meter, budget, spot
notices), the metrics sink and the loop itself. An objective (next-token SFT here in
training/sft.py; reward models, DPO, PPO and GRPO in rl/) implements this interface:

    step_batches(data)   the batches the loop steps through (their order is the data order)
    build(data)          the model to train, the method (LoRA, adapter) applied, before sharding
    ready()              after the strategy is built and a checkpoint restored, before step 1
    step(lr)             one optimizer step -> StepWork (the loop sums, logs and checks it)
    metrics()            values logged as they are at each log step (e.g. PPO's kl_coef)
    evaluate()           held-out loss (None: no held-out data); `eval_metrics` for the rest
    export()             the trained model into the run's export folder
    state() / load_state(state, path)    the objective's own state in the checkpoint manifest

An objective reads what the trainer built through the read-only view below (`cfg`, `model`,
`strategy`, `data`, ...); it never reaches into the trainer's private parts, and the trainer
never calls anything of an objective but this interface. A new objective is a subclass of
`Objective` (and a spec in orchestrator/objectives/ naming it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.data.prepared import PreparedData
    from orchestrator.training.loop import StepWork, Trainer


class Objective:
    """The interface (see the module's docstring). Subclasses implement `step_batches`,
    `build`, `step`, `evaluate` and `export`; the rest have defaults."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.eval_metrics: dict[str, float] = {}
        """Held-out metrics besides the loss (reward/accuracy, dpo/accuracy, ...)."""

    # ------------------------------------------------------------------ the interface
    def loads_base_deferred(self) -> bool:
        """True: the trainer builds the model on the meta device (`wrap` of a bare model) and
        fills it from the pretrained base by broadcast from rank 0, or from a checkpoint.
        False: `build` loads everything on every rank."""
        return False

    def wrap(self, model):
        """The method applied to a bare model the trainer built (the deferred path)."""
        return model

    def step_batches(self, data: PreparedData) -> Any:
        raise NotImplementedError

    def build(self, data: PreparedData):
        raise NotImplementedError

    def ready(self) -> None:
        """Called once the model is sharded and restored, before the first step."""

    def step(self, lr: float) -> StepWork:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        return {}

    def evaluate(self) -> float | None:
        raise NotImplementedError

    def export(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        """Restore what `state` saved (`path`: the checkpoint, for messages)."""

    # ------------------------------------------------------------------ the trainer, read-only
    @property
    def cfg(self):
        return self.t.cfg

    @property
    def ctx(self):
        return self.t.ctx

    @property
    def rank(self) -> int:
        return self.t.rank

    @property
    def world(self) -> int:
        return self.t.world

    @property
    def device(self):
        return self.t.device

    @property
    def data(self) -> PreparedData:
        return self.t.data

    @property
    def model(self):
        """The model as the strategy wrapped it (after `build`)."""
        return self.t.model

    @property
    def strategy(self):
        return self.t.strategy

    @property
    def step_index(self) -> int:
        """Optimizer steps done so far (the step being taken is `step_index + 1`)."""
        return self.t.step

    @property
    def batches(self):
        """What `step_batches` returned."""
        return self.t.batches

    @property
    def storage(self):
        return self.t.storage

    @property
    def run_store(self):
        return self.t.run_store

    @property
    def n_params(self) -> int:
        return self.t.n_params

    @property
    def base_ref(self) -> str | None:
        """The base model as the launcher named it (a durable URL or an id)."""
        return self.t.base_ref

    def say(self, msg: str) -> None:
        """Print on rank 0."""
        self.t.say(msg)

    def fetch_pretrained(self, url: str, digest: str = "") -> Path:
        """A pretrained folder of the durable store on this node, verified (trainer.py)."""
        return self.t.fetch_pretrained(url, digest)

    def export_dir(self) -> Path:
        """Where rank 0 writes the export: in place in a folder store, else node scratch."""
        return self.t.export_dir()

    def publish_export(self, out: Path, kind: str, hashed: dict | None = None) -> None:
        """Rank 0: the export's manifest, then the folder into the durable store."""
        self.t.publish_export(out, kind, hashed)

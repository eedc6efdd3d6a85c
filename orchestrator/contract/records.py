"""The run's records and the storage contract: every artifact of a run, who writes it, who
reads it, where it lives; what the launcher tells the workers (RunContext) and what they report
(RunResult, StopReason). A leaf package: it imports nothing of the project but the leaf modules,
so the launcher, the trainer, the cost model and the stores all depend on it and it on none.

Three places, and nothing else:

- DURABLE: the run's folder in the durable store (`storage.root`, an s3:// prefix or a folder
  every node mounts): `<root>/<job>/<run>/...`, and prepared data, shared by runs, at
  `<root>/.data/<key>/`. It outlives every node; a launch from anywhere finds the run there.
- NODE: node-local scratch (`storage.scratch`, instance NVMe on GPU nodes): staging, caches and
  fetched copies. Lost with the node; nothing there is needed after it.
- DRIVER: the launcher's own scratch on the machine it runs on (data preparation workspace).

Workers never read or write the driver's disk: what they need comes in the RunContext (Ray) or
from the durable store, and what they report goes to the durable store. Each file has one
writer. `ARTIFACTS` is the table `docs/storage.md` shows; the names below are the only place a
file name is spelled.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from orchestrator.names import check_name

# ---------------------------------------------------------------------- names (defined once)
RUN_META = "run.json"
LEDGER = "ledger.json"
FAILURES = "failures.jsonl"
TIMELINE = "timeline.jsonl"
EVENTS = "events.jsonl"
RESULT = "result.json"
LAUNCH_RESULT = "launch_result.json"
BILL_MD = "bill.md"
BILL_JSON = "bill.json"
CONFIGS = "config"  # config/attempt-N.yaml
METRICS_PENDING = "metrics_pending.jsonl"
RESUMES = "resumes.jsonl"
EXTRA_COSTS = "extra_costs.json"  # {"judge_api": usd, ...}: costs beyond node time, billed
"""One line per resume: the checkpoint, and what each rank fetched and verified of it."""
CHECKPOINTS = "checkpoints"
EXPORT = "export"
RAY_STORAGE = "ray"
DATA = ".data"  # <root>/.data/<key>/ (a leading dot: never a job name)
METRICS_TAIL = "metrics_tail.jsonl"  # inside a checkpoint folder
DPO_REFERENCE = "dpo_reference_logps.json"  # DPO with dpo.reference=cached (rl/recipes.py)
# node scratch, under <scratch>/<job>/<run>/
CKPT_STAGING = "ckpt_staging"
CKPT_CACHE = "ckpt_cache"
METRICS_JOURNAL = "mlflow_pending.jsonl"
EXPORT_STAGING = "export_staging"
# node scratch, shared by runs: <scratch>/data/<key>/, <scratch>/s3/...
DATA_CACHE = "data"
S3_CACHE = "s3"


class Place(Enum):
    DURABLE = "durable store"
    NODE = "node-local scratch"
    DRIVER = "driver's scratch"


@dataclass(frozen=True)
class Artifact:
    name: str
    place: Place
    writer: str
    readers: str
    what: str


ARTIFACTS = (
    Artifact(RUN_META, Place.DURABLE, "launcher", "launcher (continue: MLflow run id, projection)",
             "run metadata (RunMeta)"),
    Artifact(LEDGER, Place.DURABLE, "launcher", "launcher (bill)", "node lifetimes per launch"),
    Artifact(FAILURES, Place.DURABLE, "launcher", "launcher (retry decisions, counts sent to the "
             "workers in the RunContext)", "one FailureRecord per interrupted try"),
    Artifact(TIMELINE, Place.DURABLE, "rank 0", "launcher (ledger), rank 0 at setup (redone "
             "steps)", "TimelineRecord per setup/step/checkpoint/eval"),
    Artifact(EVENTS, Place.DURABLE, "rank 0", "people, tests", "EventRecord per logged step"),
    Artifact(RESULT, Place.DURABLE, "rank 0", "launcher", "RunResult at the end of training"),
    Artifact(LAUNCH_RESULT, Place.DURABLE, "launcher", "people, tests", "LaunchResult"),
    Artifact(f"{BILL_MD}, {BILL_JSON}", Place.DURABLE, "launcher", "people, MLflow",
             "the bill"),
    Artifact(f"{CONFIGS}/attempt-N.yaml", Place.DURABLE, "launcher", "people",
             "resolved config per launch"),
    Artifact(METRICS_PENDING, Place.DURABLE, "rank 0 (at close, if MLflow is down)",
             "launcher (replays, then deletes)", "metrics not yet in MLflow"),
    Artifact(f"{CHECKPOINTS}/step_N/", Place.DURABLE, "every rank (shards), rank 0 (manifest, "
             f"{METRICS_TAIL})", "every rank on resume", "checkpoints (or checkpoint.dir)"),
    Artifact(f"{EXPORT}/", Place.DURABLE, "rank 0", "people, MLflow", "Hugging Face folder"),
    Artifact(f"{RAY_STORAGE}/", Place.DURABLE, "Ray Train", "Ray Train",
             "Ray Train's run state (RunConfig.storage_path)"),
    Artifact(f"{DATA}/<key>/", Place.DURABLE, "launcher (once per key)", "workers (fetched "
             "per node)", "prepared tokens (sharded .npy) + tokenizer + manifest"),
    Artifact(f"{DATA_CACHE}/<key>/", Place.NODE, "local rank 0", "every rank of the node",
             "verified copy of the prepared data (S3 stores only)"),
    Artifact(f"{S3_CACHE}/<bucket>/<key>", Place.NODE, "any process (atomic rename)",
             "text streams, data sources", "s3:// objects, cached by ETag"),
    Artifact(CKPT_STAGING, Place.NODE, "every rank", "its node leader (upload)",
             "shards before they are durable"),
    Artifact(CKPT_CACHE, Place.NODE, "node leader", "every rank of the node",
             "a downloaded checkpoint"),
    Artifact(METRICS_JOURNAL, Place.NODE, "rank 0", "rank 0's sender thread",
             "every metric before MLflow has it"),
    Artifact(EXPORT_STAGING, Place.NODE, "rank 0", "rank 0 (upload)", "export before upload"),
    Artifact("prepare/", Place.DRIVER, "launcher", "launcher", "data preparation workspace"),
)  # fmt: skip


@dataclass(frozen=True)
class Spend:
    """What a run has spent: dollars and cluster wall-clock hours (cost/budget.py decides on it)."""

    usd: float
    """Dollars spent by the run so far (every launch)."""
    hours: float
    """Cluster wall-clock hours of the run so far (every launch)."""

    def after(self, seconds: float, usd_per_hour: float) -> Spend:
        """The spend `seconds` from now at `usd_per_hour`."""
        return Spend(self.usd + seconds / 3600.0 * usd_per_hour, self.hours + seconds / 3600.0)


# ---------------------------------------------------------------------- typed records
def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class StopReason(StrEnum):
    """Why training (or a launch) ended: result.json, bill.json, MLflow's `stop_reason` tag."""

    COMPLETED = "completed"
    """Every step ran; eval and export done."""
    BUDGET = "budget"
    """budget.max_usd / max_hours: saved and stopped before the cap (or not restarted at it)."""
    PREEMPTED = "preempted"
    """A spot notice: saved (if it fit in the notice window); the launcher resumes."""
    FAILED = "failed"
    """Training stopped for good (errors beyond max_failures, preemptions beyond the cap)."""
    GATE = "gate"
    """A pipeline stopped between stages: a gate's metric was not met (launch/pipeline.py)."""

    @property
    def ok(self) -> bool:
        """Ended as the user asked (the command exits 0)."""
        return self in (StopReason.COMPLETED, StopReason.BUDGET, StopReason.GATE)


@dataclass
class RunMeta:
    """run.json: what a later launch (from anywhere) needs to continue the run."""

    job: str
    run: str
    scale: str
    mlflow_run_id: str = ""
    tracking_uri: str = ""
    created: float = 0.0
    storage_root: str = ""
    data_key: str = ""
    """The prepared data the run trains on (`<root>/.data/<key>`)."""
    projected: dict[str, float] | None = None
    """The projection made before the first launch (projected vs actual keeps this one)."""
    grants: list[dict[str, Any]] = field(default_factory=list)
    """What the autoscaler granted each launch (market, fallback)."""
    resizes: list[dict[str, Any]] = field(default_factory=list)
    """An elastic run's size changes: {time, workers, why} (a lost node, a grow-back)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunMeta:
        return _from_dict(cls, json.loads(text))


@dataclass
class FailureRecord:
    """failures.jsonl: one interrupted training try."""

    attempt: int
    try_: int
    kind: str
    """preemption | app"""
    detail: str
    time: float

    def to_json(self) -> str:
        d = asdict(self)
        d["try"] = d.pop("try_")
        return json.dumps(d)

    @classmethod
    def from_json(cls, line: str) -> FailureRecord:
        d = json.loads(line)
        d["try_"] = d.pop("try", 0)
        return _from_dict(cls, d)


@dataclass
class TimelineRecord:
    """timeline.jsonl: what the cluster was doing from `start` to `end` (the ledger's input)."""

    attempt: int
    pid: int
    kind: str
    """setup | step | checkpoint | eval"""
    step: int | None
    start: float
    end: float
    node: str = ""
    """Ray node id of rank 0 (the writer)."""
    workers: int = 0
    """The worker group's size (0: not recorded, older timelines); an elastic run's changes."""


@dataclass
class EventRecord:
    """events.jsonl: one logged step."""

    attempt: int
    step: int
    loss: float
    usd_total: float
    time: float


@dataclass
class RunResult:
    """result.json: how training ended (written by rank 0, read by the launcher)."""

    step: int
    total_steps: int
    stop_reason: StopReason
    eval_loss: float | None = None
    usd_total: float = 0.0
    tokens: int = 0
    n_params: int = 0
    n_trainable: int = 0
    attempt: int = 0
    strategy: str = ""
    method: str = ""
    batching: str = ""
    peak_rss_mb_per_worker: list[float] = field(default_factory=list)
    peak_gpu_mb_per_worker: list[float] = field(default_factory=list)
    """torch.cuda.max_memory_allocated per worker (0 on CPU)."""
    checkpoint_s: list[float] = field(default_factory=list)
    checkpoint_persist_s: list[float] = field(default_factory=list)
    checkpoint_bytes: list[int] = field(default_factory=list)
    checkpoints_committed: list[int] = field(default_factory=list)
    checkpoints_failed: list[int] = field(default_factory=list)
    preemptions: int = 0
    lost_steps: int = 0
    max_log_call_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    pretrain: dict[str, float] = field(default_factory=dict)
    """Pretraining runs: planned vs trained tokens (flattened into the file as pretrain/*)."""

    def to_json(self) -> str:
        d = asdict(self)
        d.update(d.pop("pretrain"))
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        d = json.loads(text)
        d["pretrain"] = {k: v for k, v in d.items() if k.startswith("pretrain/")}
        d["stop_reason"] = StopReason(d["stop_reason"])
        return _from_dict(cls, d)


def to_line(record: Any) -> str:
    return json.dumps(asdict(record))


def parse_lines(cls, lines: list[str]) -> list:
    """Records of one stream; a line cut by a kill mid-write is skipped."""
    out = []
    for line in lines:
        try:
            out.append(_from_dict(cls, json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


# ---------------------------------------------------------------------- where things are
def default_scratch() -> str:
    """This node's scratch: $ORCHESTRATOR_SCRATCH (infra/ points it at instance NVMe), else a
    folder in the system temp dir."""
    return os.environ.get("ORCHESTRATOR_SCRATCH") or str(
        Path(tempfile.gettempdir()) / "orchestrator-scratch"
    )


@dataclass(frozen=True)
class RunStorage:
    """Where one run's artifacts live (resolved by the launcher, sent to every worker)."""

    root: str
    """The durable store: s3://bucket/prefix or an absolute folder."""
    job: str
    run: str
    checkpoint_url: str
    """The checkpoint store: `<run>/checkpoints` unless checkpoint.dir says otherwise."""
    scratch: str | None = None
    """Node-local scratch (None: each node's `default_scratch()`)."""

    def __post_init__(self) -> None:
        check_name("job", self.job)  # they become folders: nothing may point outside the store
        check_name("run", self.run)

    @property
    def run_url(self) -> str:
        return f"{self.root.rstrip('/')}/{self.job}/{self.run}"

    def data_url(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{DATA}/{key}"

    def node_dir(self, *parts: str) -> Path:
        """A folder of this run in this node's scratch (created). Named by the run and a hash
        of its durable URL: two runs of the same name in different stores never share it."""
        import hashlib

        tag = hashlib.sha256(self.run_url.encode()).hexdigest()[:8]
        path = Path(self.scratch or default_scratch()) / self.job / f"{self.run}-{tag}"
        path = path.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def node_shared_dir(self, *parts: str) -> Path:
        """A folder in this node's scratch shared by runs (data and S3 caches), created."""
        path = Path(self.scratch or default_scratch()).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class RunContext:
    """What the launcher tells every worker besides the job config (through Ray, never a file)."""

    storage: RunStorage
    data_url: str
    """The prepared data in the durable store (`<root>/.data/<key>`)."""
    tracking_uri: str
    mlflow_run_id: str
    attempt: int
    attempt_start_time: float
    """When this launch started (the cluster is paid from then on)."""
    usd_before_attempt: float
    """What earlier launches of this run cost."""
    price_per_hour_usd: float
    config_hash: str
    preemptions_before: int = 0
    """Preemptions of this run so far (from the launcher's failures.jsonl)."""
    app_failures_before: int = 0
    flush_s: float = 10.0
    hours_before_attempt: float = 0.0
    """Cluster wall-clock hours of earlier launches of this run (budget.max_hours)."""
    model_digests: dict[str, str] = field(default_factory=dict)
    """{config key: identity} of the models the job reads (`model.pretrained`,
    `ppo.reward_model`), as the launcher found them (training/bases.model_identity): workers
    verify what they load against it, and checkpoints record the base's."""
    resume_bytes: int = 0
    """Size of the checkpoint this launch resumes from (0: none), as its manifest says: the
    collective timeout of the worker group allows for fetching it."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """What one worker holds (Ray resources, as the launcher asked for them): an elastic run
    counts how many more the cluster's free resources hold before growing back."""
    scale_down_s: float = 0.0
    """How long the nodes outlive the launch on an autoscaling cluster (its idle timeout):
    billed to the run, so the budget's stop keeps room for it."""

    def spent(self, now: float) -> Spend:
        """What the run has spent by `now`, in dollars and cluster hours, over every launch:
        the one place "spent so far" is computed (the loop's budget and metrics, the
        launcher's restart decision)."""
        return Spend(self.usd_before_attempt, self.hours_before_attempt).after(
            now - self.attempt_start_time, self.price_per_hour_usd
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunContext:
        data = dict(data)
        data["storage"] = RunStorage(**data["storage"])
        return _from_dict(cls, data)


__all__ = [
    "RUN_META",
    "LEDGER",
    "FAILURES",
    "TIMELINE",
    "EVENTS",
    "RESULT",
    "LAUNCH_RESULT",
    "BILL_MD",
    "BILL_JSON",
    "CONFIGS",
    "METRICS_PENDING",
    "RESUMES",
    "CHECKPOINTS",
    "EXPORT",
    "RAY_STORAGE",
    "DATA",
    "METRICS_TAIL",
    "DPO_REFERENCE",
    "CKPT_STAGING",
    "CKPT_CACHE",
    "METRICS_JOURNAL",
    "EXPORT_STAGING",
    "DATA_CACHE",
    "S3_CACHE",
    "Place",
    "Artifact",
    "ARTIFACTS",
    "Spend",
    "StopReason",
    "RunMeta",
    "FailureRecord",
    "TimelineRecord",
    "EventRecord",
    "RunResult",
    "to_line",
    "parse_lines",
    "default_scratch",
    "RunStorage",
    "RunContext",
]

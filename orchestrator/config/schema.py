"""Typed schema of a job config.

A job is composed from `jobs/<job>.yaml` (common keys + one `scales.<scale>` overlay), reusable
blocks in `conf/<section>/<name>.yaml`, and command-line overrides (see `load.py`). OmegaConf
merges everything onto these dataclasses, so an unknown key or a wrong type fails at merge time;
cross-field rules live in each `__post_init__` and run in `OmegaConf.to_object()`.

Every error says which key is wrong and what would be valid. Units are in the names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass

from omegaconf import MISSING

from orchestrator.config.checks import choice as _choice
from orchestrator.config.checks import positive as _positive
from orchestrator.config.errors import ConfigError
from orchestrator.config.names import NAME, RULE
from orchestrator.objectives import DATA_KINDS, OBJECTIVES
from orchestrator.objectives import spec as objective_spec
from orchestrator.urls import is_object_store
from orchestrator.urls import scheme as url_scheme

STRATEGIES = ("ddp", "fsdp", "deepspeed")
METHODS = ("full", "lora", "adapter")
PREFERENCE_FORMATS = ("stack_exchange_paired", "hh_rlhf", "webgpt", "oasst")
"""Formats of `data.kind: preference` (data/preference.py FORMATS: rows -> ranked reply
groups; a unit test keeps the two equal: that module needs a tokenizer to import)."""
SCALES = ("local", "full")
# Templates and data formats are checked against their registries (data/prompts.py, the
# adapters) when a job is composed: orchestrator/compose/names.py.
BATCHING_MODES = ("auto", "pad", "grouped", "packed")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")
RESUME_MODES = ("auto", "never", "must")
MARKETS = ("spot", "on_demand")


def _check_finite(obj: object, prefix: str) -> None:
    """Every float in the config is finite: NaN passes every comparison (a cap of NaN dollars
    is never reached) and inf disables what it bounds."""
    if is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name)) for f in fields(obj)]
    elif isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list | tuple):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return
    for name, value in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        _check_finite(value, key)


# Money, time and size settings: never negative, and each below a stated maximum (a setting
# beyond it is a typo or an attack: `budget.teardown_s=-1e9` once disabled the cap).
UNIT_SUFFIXES = ("_s", "_hours", "_usd", "_days", "_bytes", "_gb", "_gib", "_minutes")
MAXIMA: tuple[tuple[str, float], ...] = (
    ("budget.max_usd", 1e7),
    ("budget.max_hours", 8760.0),
    ("budget.teardown_s", 3600.0),
    ("checkpoint.notice_window_s", 3600.0),
    ("checkpoint.notice_poll_s", 600.0),
    ("storage.flush_s", 3600.0),
    ("storage.retention_days", 3650.0),
    ("*_per_s", math.inf),  # a rate, not a duration
    ("*_s", 7 * 86400.0),
    ("*_hours", 10 * 8760.0),
    ("*_days", 36500.0),
)
"""Key pattern -> maximum (the first match applies)."""


def _check_bounds(obj: object, prefix: str) -> None:
    """Every number whose key names a unit of money, time or size (`UNIT_SUFFIXES`) is >= 0
    and within `MAXIMA`."""
    from fnmatch import fnmatchcase

    if is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name)) for f in fields(obj)]
    elif isinstance(obj, dict):
        items = list(obj.items())
    else:
        return
    for name, value in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if str(name).endswith(UNIT_SUFFIXES) or str(name).endswith("_per_s"):
                if value < 0:
                    raise ConfigError(f"{key}={value!r} must be >= 0")
                limit = next((m for pat, m in MAXIMA if fnmatchcase(key, pat)), None)
                if limit is not None and value > limit:
                    raise ConfigError(f"{key}={value!r} is beyond its maximum of {limit:g}")
            continue
        _check_bounds(value, key)


@dataclass
class ModelConfig:
    """The network. At full scale `pretrained` names the weights; the architecture numbers are
    still given so the parameter count (and so the bill) is known without downloading anything."""

    arch: str = "llama"
    """Architecture family: llama (LlamaForCausalLM) | qwen2 (Qwen2.5: LLaMA's with q/k/v
    biases) | gpt_neox (Pythia: GPTNeoXForCausalLM) |
    gpt2 (GPT-2/GPT-3 style as Cerebras-GPT: learned positions, GELU, LayerNorm)."""
    pretrained: str | None = None
    """Hugging Face model id or local folder to load weights from; None = random init from the numbers below."""
    hidden_size: int = 64
    intermediate_size: int = 172
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Grouped-query attention heads; None = num_heads (plain multi-head attention)."""
    vocab_size: int = 512
    """For random-init models trained with our own tokenizer this is overwritten by the tokenizer size."""
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rotary_pct: float = 0.25
    """gpt_neox only: share of each head's dimensions that get rotary embeddings (Pythia 0.25)."""
    tie_word_embeddings: bool = False
    init_seed: int = 0
    """Seed of the random initialisation (random-init models only)."""
    revision: str | None = None
    """Hugging Face model ids: the commit (or tag/branch) to load. A commit pins the base a
    checkpoint or an export was trained on (a resume compares it); None = the hub's main."""
    load_8bit: bool = False
    """Load the frozen base in 8-bit (bitsandbytes LLM.int8 layers), as Alpaca-LoRA and Baize
    did: on GPUs at full scale and on CPU workers at the local scale (the same int8 layers)."""
    attn_implementation: str = "sdpa"
    """sdpa (torch, everywhere) | eager | flash_attention_2 (CUDA + the flash-attn package)."""
    init_std: float = 0.02
    """gpt2 only: std of the normal init (output projections get init_std / sqrt(2 layers))."""
    mup_base_width: int | None = None
    """gpt2 only: maximal update parametrisation (muP) relative to this base width, as the
    Cerebras-GPT muP models (base 256): embeddings x mup_embeddings_scale, logits x
    base/width, attention scores / head_dim, hidden-matrix LR and init std scaled by base/width
    and sqrt(base/width). None = standard parametrisation."""
    mup_embeddings_scale: float = 10.0
    mup_init_std: float = 0.08
    """Base init std of the muP model (hidden matrices get mup_init_std * sqrt(base/width))."""

    def __post_init__(self) -> None:
        _choice("model.arch", self.arch, ("llama", "qwen2", "gpt_neox", "gpt2"))
        if self.mup_base_width is not None and self.arch != "gpt2":
            raise ConfigError(
                f"model.mup_base_width is implemented for model.arch=gpt2 (got {self.arch!r})"
            )
        _positive("model.mup_base_width", self.mup_base_width)
        _choice(
            "model.attn_implementation",
            self.attn_implementation,
            ("sdpa", "eager", "flash_attention_2"),
        )
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "vocab_size"):
            _positive(f"model.{key}", getattr(self, key))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be divisible by model.num_kv_heads={kv}"
            )


@dataclass
class SourceConfig:
    """One source of a mixture (data.format: mixture), e.g. Koala's seven datasets."""

    name: str = MISSING
    format: str = MISSING
    source: str = MISSING
    split: str = "train"
    weight: float = 1.0
    """Copies of this source per epoch: 2.0 repeats every sample, 0.5 keeps a seeded half."""
    max_examples: int | None = None
    drop_containing: list[str] = field(default_factory=list)
    """Drop samples whose text contains any of these (case-insensitive), e.g. Koala's filter of
    ShareGPT conversations mentioning "openai" or "chatgpt"."""


LENGTH_KINDS = ("measured", "published", "assumed")


@dataclass
class LengthStats:
    """Example lengths of a dataset the estimator cannot read: the count and mean tokens per
    example (template and tokenizer applied, before padding), and where they come from. The
    spread comes from the shipped sample of the same format (`sample`), rescaled to the mean;
    the batch planner then counts the slots each batching mode processes."""

    num_examples: int | None = None
    """Examples of one epoch (after the recipe's splitting and filtering); for preference data,
    replies (a pair counts 2), each prompt + reply tokens long."""
    mean_tokens: float | None = None
    sample: str | None = None
    """A data block (conf/data) whose shipped sample has this format's shape of lengths."""
    kind: str = "assumed"
    """measured (tokenized here), published (a paper or card), assumed (estimated: say how)."""
    source: str = ""

    def __post_init__(self) -> None:
        _choice("data.lengths.kind", self.kind, LENGTH_KINDS)
        _positive("data.lengths.num_examples", self.num_examples)
        _positive("data.lengths.mean_tokens", self.mean_tokens)


@dataclass
class DataConfig:
    """Where the examples come from and how they become tokens and labels."""

    kind: str = "sft"
    """sft: conversations (turns) for supervised fine-tuning and pretraining text; preference:
    a prompt and two or more replies ranked best -> worst (reward models, DPO; PPO takes its
    prompts from it). Formats of preference data: stack_exchange_paired, hh_rlhf, webgpt,
    oasst (message trees)."""
    format: str = "sharegpt"
    """Row format: sharegpt ({"id", "conversations": [{"from": "human"|"gpt", "value"}]}),
    alpaca (instruction/input/output), dolly (instruction/context/response), gpt4all
    (prompt/response), baize (input: [|Human|]/[|AI|] transcript), oasst (oasst1 message table)."""
    source: str | None = None
    """Hugging Face dataset id, a .json/.jsonl/.parquet file (relative paths are from the repo
    root) or an s3:// object (endpoint and credentials from the AWS environment). Required
    unless format is mixture."""
    sources: list[SourceConfig] = field(default_factory=list)
    """format: mixture only: the sources, each with its own format, weight and filters."""
    conditioning: str = "positive_negative"
    """Koala: positive_negative trains worse answers as negative samples (behind the negative
    marker); positive_only drops them (Koala's instruct_po mix)."""
    split: str = "train"
    data_dir: str | None = None
    """Hugging Face dataset ids: the sub-directory to load (stack-exchange-paired keeps each
    stage's data in its own: data/finetune, data/reward, data/evaluation, data/rl)."""
    template: str = "vicuna_v1.1"
    tokenizer: str | None = None
    """Hugging Face tokenizer id/folder; None = train a byte-level BPE on the data (local scale)."""
    tokenizer_vocab_size: int = 512
    """Vocabulary size of the trained BPE (only when tokenizer is None)."""
    max_seq_len: int = 2048
    """Longer conversations are split into segments of whole rounds that fit (as FastChat did)."""
    eval_fraction: float = 0.05
    """Share of examples held out for the eval loss at the end."""
    max_examples: int | None = None
    """Use only the first N rows (quick runs)."""
    shuffle_seed: int = 1234
    on_error: str = "raise"
    """raise: a bad row stops the run with its file and line; skip: bad rows are skipped and counted."""
    lengths: LengthStats = field(default_factory=lambda: LengthStats())
    """What the bill knows of a dataset that is not read here (full scale): its size and
    example lengths. Data read here (local scale) is measured instead."""
    text_field: str = "text"
    """format: text: the field holding a document in .jsonl/.parquet rows and dataset ids
    (.txt/.md/.py/... files are one document each)."""
    exclude: list[str] = field(default_factory=list)
    """format: text: glob patterns of files to leave out (e.g. "**/test/**")."""
    tokenizer_train_bytes: int = 16_000_000
    """format: text: how much of the training text a locally trained BPE learns from."""
    eval_sequences: int = 32
    """format: text: held-out sequences for the eval loss (packed from held-out documents)."""
    revision: str | None = None
    """Hugging Face dataset id sources: the revision (commit or tag) to read; pins the data key."""
    rebuild: bool = False
    """Continue a run although its data changed since it started (the tokens are prepared
    anew; the checkpoint's data position then points into different data). Refused otherwise."""

    def __post_init__(self) -> None:
        """Structure only: the template and format names are checked against their registries
        when the job is composed (compose/names.py)."""
        _choice("data.kind", self.kind, DATA_KINDS)
        if self.kind == "preference":  # any prompt style renders a prompt and its replies
            _choice("data.format", self.format, PREFERENCE_FORMATS)
        elif self.kind == "sft":
            _positive("data.eval_sequences", self.eval_sequences)
            _choice("data.conditioning", self.conditioning, ("positive_negative", "positive_only"))
            if self.format == "mixture" and not self.sources:
                raise ConfigError("data.format=mixture needs a list of data.sources")
            for i, src in enumerate(self.sources if self.format == "mixture" else []):
                if src.weight <= 0:
                    raise ConfigError(f"data.sources[{i}].weight={src.weight} must be > 0")
        self._check_sizes()

    def _check_sizes(self) -> None:
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        _positive("data.max_seq_len", self.max_seq_len)
        _positive("data.max_examples", self.max_examples)
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 0.5)")
        if self.tokenizer is None and self.tokenizer_vocab_size < 300:
            raise ConfigError(
                f"data.tokenizer_vocab_size={self.tokenizer_vocab_size} is too small for a byte-level "
                "BPE (256 byte tokens + specials); use >= 300"
            )


@dataclass
class TrainConfig:
    """The training loop."""

    strategy: str = "fsdp"
    """How the model is spread over workers: ddp | fsdp (torch FSDP2) | deepspeed."""
    method: str = "full"
    """full fine-tune | lora | adapter."""
    objective: str = "sft"
    """What a step optimises: sft (next-token loss), reward (a scalar head ranking replies:
    `reward:`), dpo (direct preference optimisation: `dpo:`), ppo (RL from a reward model:
    `ppo:`). reward, dpo and ppo read data.kind=preference; their batch sizes count groups of
    replies (reward, dpo) or prompts (ppo), not sequences."""
    epochs: float = 3.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    max_tokens: int | None = None
    """data.format text (pretraining): train on this many tokens, D; steps =
    ceil(max_tokens / (global_batch_size x data.max_seq_len)). Set by `plan` when enabled."""
    micro_batch_size: int = 4
    """Sequences per worker per forward pass."""
    global_batch_size: int = 32
    """Sequences per optimizer step over all workers; grad accumulation = global / (micro * workers)."""
    batching: str = "auto"
    """How a step's examples become micro-batches (what is learned is the same in every mode):
    pad (micro_batch_size examples in random order, padded to the longest: the originals' way),
    grouped (sorted by length, cut under a token budget), packed (rows of pack_len tokens with
    per-example position ids). auto: packed with flash_attention_2 on GPU, else grouped."""
    tokens_per_micro_batch: int | None = None
    """Token budget of a grouped/packed micro-batch (rows x padded width); None =
    micro_batch_size x the longest example (the memory the pad mode needs at worst)."""
    pack_len: int | None = None
    """Row length of packed micro-batches; None = the longest example."""
    length_grouped_steps: int = 1
    """1: every step holds random examples (what the originals trained on). k > 1: as HF
    Trainer's group_by_length, megabatches of k steps are sorted by length, so each step holds
    examples of like length (faster: no padding in big passes; changes which examples share a
    step). The step order within a megabatch is shuffled."""
    activation_checkpointing: bool = False
    precision: str = "fp32"
    seed: int = 42
    log_every_steps: int = 1
    num_threads_per_worker: int = 1
    """torch intra-op threads per worker (Ray sets OMP_NUM_THREADS=1)."""
    max_failures: int = 3
    """Restarts after application errors (an exception in training code, bad data, OOM) before
    the run stops with the error. Preemptions (a node or worker lost, a spot notice) do not
    count: they are retried without limit, up to `max_preemptions` and the budget."""
    max_preemptions: int | None = None
    """Optional cap on preemption restarts of one launch (None: no cap but the budget)."""

    def __post_init__(self) -> None:
        _choice("train.strategy", self.strategy, STRATEGIES)
        _choice("train.method", self.method, METHODS)
        _choice("train.objective", self.objective, tuple(OBJECTIVES))
        _choice("train.batching", self.batching, BATCHING_MODES)
        _positive("train.tokens_per_micro_batch", self.tokens_per_micro_batch)
        _positive("train.pack_len", self.pack_len)
        _positive("train.length_grouped_steps", self.length_grouped_steps)
        _choice("train.precision", self.precision, PRECISIONS)
        _positive("train.epochs", self.epochs)
        _positive("train.max_steps", self.max_steps)
        _positive("train.max_tokens", self.max_tokens)
        _positive("train.micro_batch_size", self.micro_batch_size)
        _positive("train.global_batch_size", self.global_batch_size)
        _positive("train.log_every_steps", self.log_every_steps)
        _positive("train.num_threads_per_worker", self.num_threads_per_worker)
        _positive("train.max_failures", self.max_failures, allow_zero=True)
        _positive("train.max_preemptions", self.max_preemptions, allow_zero=True)


@dataclass
class FsdpConfig:
    """torch FSDP2 (`fully_shard`) options."""

    reshard_after_forward: bool = True
    """Free the gathered parameters after forward (ZeRO-3-like); False keeps them (ZeRO-2-like)."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in CPU memory (CPUOffloadPolicy)."""
    hsdp: bool | None = None
    """Hybrid sharding (a 2-D mesh: shard within a node, replicate across nodes). None: on
    when hardware.num_nodes > 1."""


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO options. Batch sizes, accumulation, clipping and precision come from
    `train`/`optim`, so the hyperparameters mean the same thing in every strategy."""

    zero_stage: int = 2
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on CPU (needs DeepSpeedCPUAdam, built on first use)."""
    offload_params: bool = False
    """ZeRO-3 only: parameters live on CPU between uses."""
    optimizer: str = "auto"
    """auto: DeepSpeed's AdamW (DeepSpeedCPUAdam) when offloading, torch AdamW otherwise; torch; deepspeed."""

    def __post_init__(self) -> None:
        _choice("deepspeed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _choice("deepspeed.optimizer", self.optimizer, ("auto", "torch", "deepspeed"))
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(
                f"deepspeed.offload_params needs deepspeed.zero_stage=3 (got {self.zero_stage})"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        if self.optimizer == "torch" and (self.offload_optimizer or self.offload_params):
            raise ConfigError(
                "deepspeed.optimizer=torch cannot run with offload: ZeRO-Offload steps on the CPU "
                "with DeepSpeedCPUAdam; use deepspeed.optimizer=auto or deepspeed"
            )


@dataclass
class LoraSettings:
    """peft LoRA (method: lora)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: str = "none"

    def __post_init__(self) -> None:
        _positive("lora.r", self.r)
        _choice("lora.bias", self.bias, ("none", "all", "lora_only"))
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (e.g. q_proj)")


@dataclass
class AdapterSettings:
    """LLaMA-Adapter via peft AdaptionPromptConfig (method: adapter): learnable prompts of
    `adapter_len` tokens in the top `adapter_layers` layers, behind zero-initialised gates."""

    adapter_len: int = 10
    adapter_layers: int = 30

    def __post_init__(self) -> None:
        _positive("adapter.adapter_len", self.adapter_len)
        _positive("adapter.adapter_layers", self.adapter_layers)


@dataclass
class ExportConfig:
    """A Hugging Face `save_pretrained` folder at the end of the run (runs/<job>/<run>/export/)."""

    enabled: bool = True
    merge_lora: bool = True
    """LoRA: merge the adapter into the weights (a plain model folder); else base/ + adapter/."""


@dataclass
class OptimConfig:
    """AdamW with warmup and a decay schedule."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    """Fraction of total steps spent in linear warmup (ignored when warmup_steps is set)."""
    warmup_steps: int | None = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak (cosine / linear)."""
    grad_clip: float | None = 1.0
    """Max global gradient norm; None = no clipping."""

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        _positive("optim.grad_clip", self.grad_clip)


@dataclass
class CheckpointConfig:
    interval: str = "steps"
    """steps: every `every_steps`; minutes: every `every_minutes`; auto: the Young/Daly optimum
    sqrt(2 * measured save time * MTBF), MTBF from `mtbf_hours` and the preemptions seen."""
    every_steps: int = 50
    """The interval in steps (`auto` also uses it until it has measured a save)."""
    every_minutes: float | None = None
    mtbf_hours: float = 6.0
    """Expected mean time between preemptions on spot, for `auto`."""
    keep_last: int = 2
    """How many complete checkpoints to keep (older ones are deleted)."""
    keep_every: int | None = None
    """Also keep every checkpoint whose step is a multiple of this (milestones)."""
    async_save: bool = False
    """Save in the background. DCP (DDP, FSDP2): the state is copied into CPU memory and
    training goes on while every rank writes and uploads its shards (`dcp.async_save`);
    DeepSpeed writes synchronously and uploads in the background."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint if one exists; never: refuse an existing run; must: fail without one."""
    dir: str | None = None
    """Where checkpoints go: a folder (shared by all nodes) or s3://bucket/prefix (endpoint and
    credentials from the AWS environment, e.g. AWS_ENDPOINT_URL). None = runs/<job>/<run>/checkpoints."""
    notice_poll_s: float = 2.0
    """How often the spot-notice watcher polls the cloud metadata endpoint."""
    notice_window_s: float = 100.0
    """Time a spot notice leaves for an emergency save (AWS gives 120 s before the node is
    taken, minus detection). A save measured to take longer is not started: the run resumes
    from the last interval checkpoint instead of losing a half-written one."""

    def __post_init__(self) -> None:
        _choice("checkpoint.interval", self.interval, ("steps", "minutes", "auto"))
        _positive("checkpoint.every_steps", self.every_steps)
        _positive("checkpoint.every_minutes", self.every_minutes)
        _positive("checkpoint.mtbf_hours", self.mtbf_hours)
        _positive("checkpoint.keep_last", self.keep_last)
        _positive("checkpoint.keep_every", self.keep_every)
        _positive("checkpoint.notice_poll_s", self.notice_poll_s)
        _positive("checkpoint.notice_window_s", self.notice_window_s)
        _choice("checkpoint.resume", self.resume, RESUME_MODES)
        if self.interval == "minutes" and self.every_minutes is None:
            raise ConfigError("checkpoint.interval=minutes needs checkpoint.every_minutes")
        if self.dir is not None:
            url_scheme(self.dir, "checkpoint.dir")
        if is_object_store(self.dir) and len((self.dir or "").rstrip("/")) <= 5:
            raise ConfigError(f"checkpoint.dir={self.dir!r}: expected s3://bucket[/prefix]")


@dataclass
class NodeRange:
    """Elastic training (hardware.nodes): run on any whole number of nodes in [min, max]."""

    min: int = MISSING
    max: int = MISSING


@dataclass
class HardwareConfig:
    """What the job runs on. One worker = one GPU (or one CPU process at local scale)."""

    accelerator: str = "cpu"
    """cpu, or a GPU model from conf/pricing (e.g. A100-80GB)."""
    num_workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0
    num_nodes: int = 1
    instance_type: str = "local-2vcpu"
    """Instance type from conf/pricing that prices this cluster (per node)."""
    market: str = "on_demand"
    autoscale: bool | None = None
    """On an autoscaling Ray cluster: request the workers up front (request_resources), pin
    them to nodes of `market` (their `spot`/`on_demand` resource) and release the request at
    the end. None = when launched on a named cluster (`cluster=NAME`); true; false."""
    spot_wait_s: float = 600.0
    """Autoscaling: how long to wait for the job's spot workers before `spot_fallback`."""
    spot_fallback: str = "on_demand"
    """on_demand: then ask for on-demand nodes (recorded in the bill); none: fail."""
    on_demand_wait_s: float = 900.0
    head_instance_type: str | None = None
    """The cluster's head node (an instance type from conf/pricing), billed on demand for the
    whole run, waits included; None: no separate head (a local cluster)."""
    scale_down_s: float = 0.0
    """Idle time before the autoscaler removes workers after the job (infra/: 300 s on AWS)."""
    alternatives: list[str] = field(default_factory=list)
    """Hardware blocks (conf/hardware) that run the same job, in preference order, for when
    this one has no capacity (launch/failover.py): e.g. [a100_40gb_x8] for 8 x A100-80GB."""
    nodes: NodeRange | None = None
    """Elastic: {min, max} nodes, max = num_nodes, each with num_workers / num_nodes workers.
    The run starts on at least `min` nodes, goes on with fewer when one is lost, and grows back
    at its next checkpoint when nodes return (Ray Train's elastic worker group; the global
    batch stays the same, spread over the workers there are). None: always num_nodes."""

    grow_back: str = "priced"
    """Elastic: after a checkpoint with room for more nodes, priced (restart on them when the
    steps left gain more than the restart costs), always, or never."""

    @property
    def workers_per_node(self) -> int:
        return self.num_workers // self.num_nodes

    @property
    def min_workers(self) -> int:
        """The fewest workers the job runs on (num_workers unless elastic)."""
        return self.nodes.min * self.workers_per_node if self.nodes else self.num_workers

    @property
    def elastic(self) -> bool:
        return self.nodes is not None and self.nodes.min < self.nodes.max

    def __post_init__(self) -> None:
        _positive("hardware.num_workers", self.num_workers)
        self._check_nodes()
        _choice("hardware.spot_fallback", self.spot_fallback, ("on_demand", "none"))
        _positive("hardware.spot_wait_s", self.spot_wait_s, allow_zero=True)
        _positive("hardware.on_demand_wait_s", self.on_demand_wait_s)
        _positive("hardware.num_nodes", self.num_nodes)
        _positive("hardware.scale_down_s", self.scale_down_s, allow_zero=True)
        _positive("hardware.cpus_per_worker", self.cpus_per_worker, allow_zero=True)
        _positive("hardware.gpus_per_worker", self.gpus_per_worker, allow_zero=True)
        _choice("hardware.market", self.market, MARKETS)
        if self.accelerator == "cpu" and self.gpus_per_worker:
            raise ConfigError(
                "hardware.gpus_per_worker must be 0 when hardware.accelerator is 'cpu'"
            )
        if self.accelerator != "cpu" and not self.gpus_per_worker:
            raise ConfigError(
                f"hardware.accelerator={self.accelerator!r} needs hardware.gpus_per_worker >= 1"
            )

    def _check_nodes(self) -> None:
        if self.nodes is None:
            return
        _choice("hardware.grow_back", self.grow_back, ("priced", "always", "never"))
        lo, hi = self.nodes.min, self.nodes.max
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ConfigError(f"hardware.nodes={{min: {lo}, max: {hi}}}: need 1 <= min <= max")
        if hi != self.num_nodes:
            raise ConfigError(
                f"hardware.nodes.max={hi} must equal hardware.num_nodes={self.num_nodes} (the "
                "size the job is priced and planned at)"
            )
        if self.num_workers % self.num_nodes:
            raise ConfigError(
                f"hardware.nodes: hardware.num_workers={self.num_workers} must be a multiple of "
                f"hardware.num_nodes={self.num_nodes} (every node runs the same number of workers)"
            )


@dataclass
class InstancePrice:
    """One row of the price catalog."""

    cloud: str = "aws"
    """aws | gcp | lambda | local: where live prices can be asked for."""
    region: str | None = "us-east-1"
    gpu: str | None = None
    num_gpus: int = 0
    vcpus: int = 0
    on_demand_per_hour_usd: float = MISSING
    spot_per_hour_usd: float | None = None
    spot_per_hour_usd_by_zone: dict[str, float] = field(default_factory=dict)
    """Spot $/h per availability zone where known (live prices fill it: spot prices differ by
    zone); a zone not listed is priced at spot_per_hour_usd."""
    source: str = MISSING
    startup_s: float | None = None
    """Launch start-up on this kind of node (None = cost.overheads.startup_s)."""
    teardown_s: float | None = None
    """From the last step to the cluster's release (None = cost.overheads.teardown_s)."""
    local_disk_gb: float | None = None
    """Instance-store NVMe (GB) for node scratch: checkpoint staging, data and model caches."""
    gpu_link_bytes_per_s: float | None = None
    """Collective bandwidth per GPU inside the node (NVLink/NVSwitch, else PCIe): what an
    all-gather or reduce-scatter among the node's GPUs moves per second per GPU."""
    network_bytes_per_s: float | None = None
    """The node's network (EFA or ENA), shared by its GPUs, for collectives across nodes."""
    ebs_gb: float = 0.0
    """Root volume (GB) billed while the node runs."""


@dataclass
class GpuSpec:
    peak_flops: float = MISSING
    """Dense bf16/fp16 tensor FLOP/s of one GPU."""
    source: str = MISSING
    memory_gib: float | None = None
    """Device memory (GiB), for the fit check."""
    memory_bytes_per_s: float | None = None
    """Device memory bandwidth: optimizer updates and decoding are bound by it."""
    ray_type: str | None = None
    """Ray's accelerator type (`accelerator_type:<ray_type>` resource): jobs are pinned to it."""


@dataclass
class JudgePrice:
    """One judge model's API prices (cost.judges.<model>): the eval stage's judge line."""

    usd_per_1m_input_tokens: float = MISSING
    usd_per_1m_output_tokens: float = MISSING
    source: str = MISSING


@dataclass
class KernelModel:
    """How fast one pass runs on a device: the share of peak FLOP/s its matmuls reach,

        eff = e_max * t / (t + t_half) * d / (d + d_half) * gpu_factor[gpu]

    with t the tokens one GPU (or CPU worker) processes in one micro-batch and d the model
    width: small passes and narrow models leave the device idle between kernels. The three
    constants are fitted on llm-foundry's MPT throughput table (conf/benchmarks, `python -m
    orchestrator.cost.calibration`); a CPU kernel is fitted on this machine's recorded runs.
    See docs/COST_MODEL.md."""

    e_max: float = 0.8127
    t_half: float = 1305.4
    d_half: float = 665.7
    gpu_factor: dict[str, float] = field(default_factory=dict)
    """Per GPU type, relative to the A100 the constants were fitted on."""
    int8_factor: float = 0.79
    """bitsandbytes LLM.int8 matmuls relative to bf16 (a frozen 8-bit base)."""
    eager_attention_factor: float = 0.5
    """Attention without a fused (flash) kernel: its FLOPs run at this share of `eff`."""
    frameworks: dict[str, float] = field(default_factory=dict)
    """Named training stacks relative to the calibrated one (ours = 1.0)."""
    range_low: float = 0.8
    """The low/high bill range: efficiency from range_low x to range_high x the model's."""
    range_high: float = 1.2
    source: str = ""


@dataclass
class Overheads:
    startup_s: float = 600.0
    """Provisioning, image pull, Ray start, model load: paid once per launch."""
    restart_s: float = 300.0
    """A new node after a preemption, plus reload."""
    teardown_s: float = 30.0
    """From the last step to the end of the launch: final save, shutdown of the workers."""
    checkpoint_write_bytes_per_s: float = 1.0e9
    """One node writing (and uploading) its shards of a checkpoint; all nodes write at once."""
    checkpoint_stage_bytes_per_s: float = 5.0e9
    """One GPU copying its shard into CPU memory (what an async DCP save blocks training for)."""
    spot_preemptions_per_node_hour: float = 0.05
    """Expected spot interruptions per node-hour (SkyPilot/AWS reports for GPU spot: a few %/h)."""
    spot_capacity_wait_s: float = 300.0
    """Expected wait for spot GPU capacity per launch (the head is billed meanwhile); the
    high end of the range waits `hardware.spot_wait_s` and falls back to on-demand."""


@dataclass
class CostConfig:
    """Prices and the throughput model that turns FLOPs into hours."""

    instances: dict[str, InstancePrice] = field(default_factory=dict)
    gpus: dict[str, GpuSpec] = field(default_factory=dict)
    kernel: KernelModel = field(default_factory=KernelModel)
    cpu_kernel: KernelModel = field(default_factory=KernelModel)
    """The kernel model of CPU workers (local scale), fitted on this machine's recorded runs."""
    overheads: Overheads = field(default_factory=Overheads)
    object_store_usd_per_gb_month: dict[str, float] = field(default_factory=lambda: {"s3": 0.023})
    """What the kept checkpoints and export cost in `storage.root`'s store, by its scheme (s3,
    gs). A folder root is a volume: priced as the nodes' cloud's volumes (free on this
    machine)."""
    volume_usd_per_gb_month: dict[str, float] = field(
        default_factory=lambda: {"aws": 0.08, "local": 0.0}
    )
    """The nodes' root volumes (`instances.<type>.ebs_gb`), by the instance's cloud."""
    judges: dict[str, JudgePrice] = field(default_factory=dict)
    """Judge models' API prices by `eval.judge.model` (docs/facts/judge_prices.md)."""
    cpu_peak_flops_per_worker: float = 95.0e9
    """CPU workers (local scale): fp32 peak of one core (torch.mm ~190 GFLOP/s on 2 cores here)."""
    live_spot_prices: bool = True
    """Use AWS describe_spot_price_history when AWS credentials exist (else the catalog)."""

    def __post_init__(self) -> None:
        _check_finite(self, "cost")
        for name, k in (("kernel", self.kernel), ("cpu_kernel", self.cpu_kernel)):
            if not 0.0 < k.e_max <= 1.0:
                raise ConfigError(f"cost.{name}.e_max={k.e_max} must be in (0, 1]")
            for f in ("t_half", "d_half"):
                _positive(f"cost.{name}.{f}", getattr(k, f), allow_zero=True)
            for f in ("int8_factor", "eager_attention_factor", "range_low", "range_high"):
                _positive(f"cost.{name}.{f}", getattr(k, f))
            if k.range_low > k.range_high:
                raise ConfigError(f"cost.{name}.range_low must not exceed range_high")
            for key, factor in {**k.gpu_factor, **k.frameworks}.items():
                _positive(f"cost.{name}.{key}", factor)
        for key, table in (("object_store_usd_per_gb_month", self.object_store_usd_per_gb_month),
                           ("volume_usd_per_gb_month", self.volume_usd_per_gb_month)):  # fmt: skip
            for name, usd in table.items():
                _positive(f"cost.{key}.{name}", usd, allow_zero=True)
        for name in ("startup_s", "restart_s", "teardown_s"):
            _positive(f"cost.overheads.{name}", getattr(self.overheads, name), allow_zero=True)
        for name in (
            "checkpoint_write_bytes_per_s",
            "checkpoint_stage_bytes_per_s",
        ):
            _positive(f"cost.overheads.{name}", getattr(self.overheads, name))
        _positive(
            "cost.overheads.spot_capacity_wait_s", self.overheads.spot_capacity_wait_s,
            allow_zero=True,
        )  # fmt: skip
        _positive(
            "cost.overheads.spot_preemptions_per_node_hour",
            self.overheads.spot_preemptions_per_node_hour,
            allow_zero=True,
        )
        _positive("cost.cpu_peak_flops_per_worker", self.cpu_peak_flops_per_worker)
        # A price of 0 (or less) would make spend never grow and every cap unreachable.
        for name, price in self.instances.items():
            key = f"cost.instances.{name}"
            _positive(f"{key}.on_demand_per_hour_usd", price.on_demand_per_hour_usd)
            _positive(f"{key}.spot_per_hour_usd", price.spot_per_hour_usd)
            for zone, usd in price.spot_per_hour_usd_by_zone.items():
                _positive(f"{key}.spot_per_hour_usd_by_zone.{zone}", usd)
            _positive(f"{key}.num_gpus", price.num_gpus, allow_zero=True)
            _positive(f"{key}.startup_s", price.startup_s, allow_zero=True)
            _positive(f"{key}.teardown_s", price.teardown_s, allow_zero=True)
            _positive(f"{key}.local_disk_gb", price.local_disk_gb, allow_zero=True)
            _positive(f"{key}.gpu_link_bytes_per_s", price.gpu_link_bytes_per_s)
            _positive(f"{key}.network_bytes_per_s", price.network_bytes_per_s)
            _positive(f"{key}.ebs_gb", price.ebs_gb, allow_zero=True)
            if price.cloud not in self.volume_usd_per_gb_month:
                raise ConfigError(
                    f"{key}.cloud={price.cloud!r} has no cost.volume_usd_per_gb_month entry; "
                    f"priced clouds: {sorted(self.volume_usd_per_gb_month)}"
                )
            if not str(price.source or "").strip():
                raise ConfigError(f"{key}.source is empty: every price needs its source")
        for name, judge in self.judges.items():
            key = f"cost.judges.{name}"
            _positive(
                f"{key}.usd_per_1m_input_tokens", judge.usd_per_1m_input_tokens, allow_zero=True
            )
            _positive(
                f"{key}.usd_per_1m_output_tokens", judge.usd_per_1m_output_tokens, allow_zero=True
            )
            if not str(judge.source or "").strip():
                raise ConfigError(f"{key}.source is empty: every price needs its source")
        for name, gpu in self.gpus.items():
            key = f"cost.gpus.{name}"
            _positive(f"{key}.peak_flops", gpu.peak_flops)
            _positive(f"{key}.memory_gib", gpu.memory_gib)
            _positive(f"{key}.memory_bytes_per_s", gpu.memory_bytes_per_s)
            if not str(gpu.source or "").strip():
                raise ConfigError(f"{key}.source is empty: every GPU figure needs its source")


@dataclass
class BudgetConfig:
    """A hard cap: the run saves a checkpoint and stops before the next step would cross it."""

    max_usd: float | None = None
    max_hours: float | None = None
    """Wall-clock hours of the cluster over all launches of the run."""
    deadline_hours: float | None = None
    """When the run should be done, in the same hours (not a stop): waiting for spot capacity
    that would miss it gives way to on-demand nodes when they meet it (cost/capacity.py)."""
    teardown_s: float = 20.0
    """Reserved for stopping (final checkpoint, shutdown): still billed after the last step."""

    def __post_init__(self) -> None:
        _positive("budget.max_usd", self.max_usd)
        _positive("budget.max_hours", self.max_hours)
        _positive("budget.deadline_hours", self.deadline_hours)


@dataclass
class StorageConfig:
    """Where a run's artifacts live (docs/storage.md has the whole contract).

    The durable store holds everything that must outlive a node: run metadata, ledger, timeline,
    events, failures, prepared data, checkpoints (unless checkpoint.dir says otherwise), the
    export. Nodes never read each other's disks: on a cluster the durable store must be
    s3://bucket/prefix or a folder every node mounts (declared with `shared: true`)."""

    root: str | None = None
    """s3://bucket/prefix, or a folder. None: $ORCHESTRATOR_STORAGE_ROOT (a cluster definition
    sets it), else ./runs."""
    shared: bool = False
    """`root` is a folder every node of the cluster mounts at this path (NFS, EFS, FSx, or one
    machine): true declares it. Also declared by ORCHESTRATOR_STORAGE_SHARED=1."""
    scratch: str | None = None
    """Node-local scratch for staging, caches and fetched copies (None: each node's
    $ORCHESTRATOR_SCRATCH, which infra/ points at instance NVMe, else the system temp dir)."""
    flush_s: float = 10.0
    """S3 stores: how often rank 0 writes its buffered timeline and events (and always at every
    checkpoint and at the end)."""
    retention_days: float = 30.0
    """How long the kept checkpoints and the export stay in the store (priced in the bill)."""

    def __post_init__(self) -> None:
        if self.root is not None:
            url_scheme(self.root, "storage.root")
        if is_object_store(self.root) and len((self.root or "").rstrip("/")) <= 5:
            raise ConfigError(f"storage.root={self.root!r}: expected s3://bucket[/prefix]")
        if self.shared and is_object_store(self.root):
            raise ConfigError("storage.shared declares a shared folder; storage.root is s3://")
        _positive("storage.flush_s", self.flush_s)
        _positive("storage.retention_days", self.retention_days, allow_zero=True)


@dataclass
class TrackingConfig:
    experiment: str | None = None
    """MLflow experiment; None = the job name."""


PLAN_RULES = ("tokens_per_param", "epoch", "hoffmann")


@dataclass
class PlanConfig:
    """From-scratch pretraining sized by the Chinchilla planner (`orchestrator/plan`): when
    enabled, the budget picks the compute-optimal size, and the planner fills model.{num_layers,
    hidden_size, num_heads, intermediate_size}, train.max_tokens, train.global_batch_size,
    optim.lr and optim.warmup_steps (the Cerebras-GPT rules). One budget must be set."""

    enabled: bool = False
    budget_flops: float | None = None
    budget_usd: float | None = None
    """Dollars on the job's hardware and market, overheads included (the projected bill of the
    planned job stays within it)."""
    budget_gpu_hours: float | None = None
    rule: str = "tokens_per_param"
    """tokens_per_param: D = tokens_per_param x N (Cerebras-GPT); epoch / hoffmann: the
    minimum of that parametric loss fit L(N, D)."""
    tokens_per_param: float = 20.0
    batch_sequences: int | None = None
    """Sequences per step; None = the Cerebras-GPT table at this size (interpolated)."""

    def __post_init__(self) -> None:
        _choice("plan.rule", self.rule, PLAN_RULES)
        _positive("plan.batch_sequences", self.batch_sequences)
        budgets = [self.budget_flops, self.budget_usd, self.budget_gpu_hours]
        for key, v in zip(("budget_flops", "budget_usd", "budget_gpu_hours"), budgets, strict=True):
            _positive(f"plan.{key}", v)
        if self.enabled and sum(b is not None for b in budgets) != 1:
            raise ConfigError(
                "plan.enabled needs exactly one of plan.budget_flops, plan.budget_usd, "
                f"plan.budget_gpu_hours (got {[b for b in budgets if b is not None]})"
            )
        _positive("plan.tokens_per_param", self.tokens_per_param)


REPLAY_BATCHING = ("pad_to_max", "pad", "grouped", "packed")
ATTENTION_KINDS = ("flash", "sdpa", "eager")


@dataclass
class ReplayConfig:
    """The original run as it was (docs/facts/originals.md), for `estimate --replay`: its
    batching and attention kernel, on the job's full-scale hardware, run length and model.
    What is not known of an original is marked [R] in the job file."""

    batching: str = "pad"
    """pad_to_max (every example padded to data.max_seq_len, FastChat's padding=max_length),
    pad (to the longest of each per-device micro-batch, HF Trainer), grouped, packed."""
    micro_batch_size: int | None = None
    """The original's per-device micro-batch (None: train.micro_batch_size)."""
    attention: str = "eager"
    """flash (FlashAttention kernels), sdpa, eager (materialised scores)."""
    framework: str = "ours"
    """A key of cost.kernel.frameworks (the stack's speed relative to the calibrated one)."""
    published_hours: float | None = None
    """The original's published wall time, when docs/facts has one (a band check, not a target)."""
    published_usd: float | None = None
    published_source: str = ""
    published_mt_bench: float | None = None
    """The released model's MT-bench score (GPT-4 judge; docs/facts/mt_bench.md), where the
    LMSYS leaderboard lists one: a reference point next to the bill, not this run's quality."""
    published_mt_bench_model: str = ""
    """Which released model that score is of, and how it differs from the recipe."""

    def __post_init__(self) -> None:
        _choice("replay.batching", self.batching, REPLAY_BATCHING)
        _choice("replay.attention", self.attention, ATTENTION_KINDS)
        _positive("replay.micro_batch_size", self.micro_batch_size)
        _positive("replay.published_hours", self.published_hours)
        _positive("replay.published_usd", self.published_usd)
        if self.published_mt_bench is not None and not 1 <= self.published_mt_bench <= 10:
            raise ConfigError(
                f"replay.published_mt_bench={self.published_mt_bench}: MT-bench scores are 1-10"
            )


def objective_sections(cls: type) -> type:
    """Add one field per registered objective's settings (`ppo: PpoSettings`, ...) to the
    class before @dataclass reads its fields, so an objective's settings live next to its
    code and registering it (orchestrator/objectives/__init__.py) is all a new one needs.
    Code reads them typed through the objective's `SETTINGS.of(cfg)`."""
    for s in OBJECTIVES.values():
        if s.settings is not None:
            key, settings = s.settings.key, s.settings.cls
            if key in cls.__annotations__:
                raise TypeError(f"objective {s.name}: its settings key {key!r} is taken")
            cls.__annotations__[key] = settings
            setattr(cls, key, field(default_factory=settings))
    return cls


@dataclass
@objective_sections
class JobConfig:
    job: str = MISSING
    """Recipe name (the file name under jobs/)."""
    scale: str = "local"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    export: ExportConfig = field(default_factory=ExportConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self) -> None:
        _choice("scale", self.scale, SCALES)
        if not NAME.fullmatch(self.job or ""):
            raise ConfigError(f"job={self.job[:120]!r} is not a valid name: use {RULE}")
        _check_finite(self, "")
        _check_bounds(self, "")
        text = self.data.format == "text"
        from_scratch = text and self.train.method == "full" and self.model.pretrained is None
        if (self.train.max_tokens or self.plan.enabled) and not from_scratch:
            raise ConfigError(
                "train.max_tokens and plan.enabled are for from-scratch pretraining: "
                "data.format=text, train.method=full, model.pretrained=null"
            )
        if self.data.format != "mixture" and self.data.source is None:
            raise ConfigError(
                f"data.source is required for data.format={self.data.format!r} "
                "(a dataset id, a .json/.jsonl/.parquet file or an s3:// object)"
            )
        hw = self.hardware
        if hw.instance_type not in self.cost.instances:
            raise ConfigError(
                f"hardware.instance_type={hw.instance_type!r} has no price in cost.instances; "
                f"known: {sorted(self.cost.instances)}"
            )
        if hw.head_instance_type is not None and hw.head_instance_type not in self.cost.instances:
            raise ConfigError(
                f"hardware.head_instance_type={hw.head_instance_type!r} has no price in "
                f"cost.instances; known: {sorted(self.cost.instances)}"
            )
        if self.replay.framework not in {"ours", *self.cost.kernel.frameworks}:
            raise ConfigError(
                f"replay.framework={self.replay.framework!r} is not in cost.kernel.frameworks; "
                f"known: {sorted({'ours', *self.cost.kernel.frameworks})}"
            )
        if hw.accelerator != "cpu" and hw.accelerator not in self.cost.gpus:
            raise ConfigError(
                f"hardware.accelerator={hw.accelerator!r} has no spec in cost.gpus; "
                f"known: {sorted(self.cost.gpus)}"
            )
        if objective_spec(self.train.objective).micro_counts_items:
            per_step = self.train.micro_batch_size * hw.num_workers
            what = f"train.micro_batch_size * hardware.num_workers = {per_step}"
        else:
            per_step, what = hw.num_workers, f"hardware.num_workers = {hw.num_workers}"
        if self.train.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.train.global_batch_size} must be a multiple of "
                f"{what}"
            )
        if hw.accelerator == "cpu" and self.model.attn_implementation == "flash_attention_2":
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 needs CUDA GPUs; with "
                "hardware.accelerator='cpu' use sdpa"
            )
        if self.model.load_8bit and self.train.method == "full":
            raise ConfigError(
                "model.load_8bit freezes the base in int8: use train.method=lora or adapter"
            )
        if self.model.load_8bit and self.train.strategy != "ddp":
            raise ConfigError(
                f"model.load_8bit needs train.strategy=ddp (got {self.train.strategy!r}): "
                "bitsandbytes' int8 weights can be neither sharded by FSDP2 nor partitioned by "
                "ZeRO; every worker holds the whole int8 base"
            )
        if self.model.load_8bit and self.model.pretrained is None:
            raise ConfigError("model.load_8bit quantizes pretrained weights: set model.pretrained")
        if self.train.method == "adapter" and self.adapter.adapter_layers > self.model.num_layers:
            raise ConfigError(
                f"adapter.adapter_layers={self.adapter.adapter_layers} exceeds "
                f"model.num_layers={self.model.num_layers}"
            )
        self._check_objective()
        if self.data.max_seq_len > self.model.max_position_embeddings:
            raise ConfigError(
                f"data.max_seq_len={self.data.max_seq_len} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}"
            )

    def _check_elastic(self, spec) -> None:
        """hardware.nodes {min < max}: only where a changing worker count trains the same."""
        hw = self.hardware
        if not hw.elastic:
            return
        assert hw.nodes is not None
        where = f"hardware.nodes={{min: {hw.nodes.min}, max: {hw.nodes.max}}}"
        if self.train.strategy == "deepspeed":
            raise ConfigError(
                f"{where}: train.strategy=deepspeed cannot change its worker count (its ZeRO "
                "checkpoints do not reshard); use train.strategy=fsdp, or set hardware.nodes "
                "min = max"
            )
        if not spec.elastic:
            raise ConfigError(
                f"{where}: train.objective={self.train.objective} sizes its per-worker work by "
                "the worker count; elastic runs are for sft (set hardware.nodes min = max)"
            )
        if self.data.format == "text":
            raise ConfigError(
                f"{where}: data.format=text streams documents per worker (its read position is "
                "one per rank); elastic runs need conversation data (set hardware.nodes min = max)"
            )

    def _check_objective(self) -> None:
        """The objective's data kind, what it starts from, and its own checks (its spec)."""
        obj, kind = self.train.objective, self.data.kind
        spec = objective_spec(obj)
        if kind not in spec.data_kinds:
            reads = {k: [o for o, v in OBJECTIVES.items() if k in v.data_kinds] for k in DATA_KINDS}
            raise ConfigError(
                f"train.objective={obj!r} cannot read data.kind={kind!r}; it reads "
                f"data.kind={' or '.join(repr(k) for k in spec.data_kinds)} (data kinds and "
                f"their objectives: {reads})"
            )
        spec.check(self)
        self._check_elastic(spec)
        if spec.from_trained and self.model.pretrained is None:
            raise ConfigError(
                f"train.objective={obj} starts from a trained model: set model.pretrained (a "
                "pipeline sets it from the stage named in `input`)"
            )

"""Will the job fit? GPU memory per worker and node-local disk, estimated at config time.

Per GPU, for a model of P parameters (T of them trained), W workers (S in a sharding group:
all of them for FSDP and ZeRO-3, one node's for HSDP):

    state        full fine-tune, fp32 master weights + grads + Adam (m, v): 16 bytes/param,
                 all of it per GPU (DDP), / S (FSDP, ZeRO-3), weights 2 + grads 2 and optimizer
                 12 / W (ZeRO-1), weights 2 and (grads 2 + optimizer 12) / W (ZeRO-2); DeepSpeed
                 in fp32: 4 + 4 + 8. Offloaded parts live on the CPU.
                 frozen-base methods (LoRA, adapters): the base at its storage size (int8 1,
                 bf16 2, fp32 4 bytes; / S when sharded) + 16 bytes per trained parameter
    gathered     FSDP / ZeRO-3: two layers' unsharded weights in the compute dtype (the
                 current one and the prefetched one)
    activations  per token of a micro-batch, per layer (Korthikanti et al. 2022, arXiv
                 2205.05198, table 2, 16-bit): 34 h bytes, + 5 a s bytes for the attention
                 scores with eager attention (flash and sdpa kernels never store them); with
                 recomputation only the layer inputs (2 h bytes) stay, plus one layer's worth
                 while it is recomputed. Doubled in fp32.
    logits       tokens x vocabulary x 10 bytes (bf16 logits, their fp32 copy for the loss,
                 and its gradient)
    overhead     2 GiB (CUDA context, NCCL buffers) + 10% (allocator fragmentation)

It is an estimate, not a profile: its job is to refuse what cannot fit (13B with DDP on 80 GB)
and say what to change, and the GPU smoke suite checks real peaks against it (tests/gpu).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.objectives import spec as objective_spec
from orchestrator.urls import is_object_store

GIB = 1024**3


@dataclass
class MemoryEstimate:
    state_bytes: float
    gathered_bytes: float
    activation_bytes: float
    logits_bytes: float
    overhead_bytes: float
    gpu_bytes: float
    tokens_per_micro_batch: int
    extra_models_bytes: float = 0.0
    """Preference and RL stages: the frozen reference copy, the reward model, the critic."""

    @property
    def total_bytes(self) -> float:
        return (
            self.state_bytes + self.gathered_bytes + self.activation_bytes + self.logits_bytes
            + self.overhead_bytes + self.extra_models_bytes
        )  # fmt: skip

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.gpu_bytes

    def summary(self) -> str:
        g = lambda b: f"{b / GIB:.1f}"  # noqa: E731
        return (
            f"~{g(self.total_bytes)} GiB per GPU of {g(self.gpu_bytes)} (state {g(self.state_bytes)}, "
            f"gathered layers {g(self.gathered_bytes)}, activations {g(self.activation_bytes)} at "
            f"{self.tokens_per_micro_batch:,} tokens per micro-batch, logits {g(self.logits_bytes)}, "
            f"overhead {g(self.overhead_bytes)}"
            + (f", besides (reference, reward, critic, rollout engine, KV cache) {g(self.extra_models_bytes)}"
               if self.extra_models_bytes else "")
            + ")"
        )  # fmt: skip

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}


def tokens_per_micro_batch(cfg: JobConfig) -> int:
    """The most tokens a micro-batch can hold (what the pad mode needs at worst), as the
    objective counts a micro-batch (reward/DPO: groups of two replies; GRPO: completions)."""
    t = cfg.train
    spec = objective_spec(t.objective)
    if t.tokens_per_micro_batch:
        return t.tokens_per_micro_batch
    if spec.micro_tokens is not None:
        return spec.micro_tokens(cfg)
    return t.micro_batch_size * cfg.data.max_seq_len * spec.sequences_per_item


def extra_models_bytes(cfg: JobConfig, n_params: int) -> float:
    """Whole models a preference or RL stage holds on every GPU besides the trained one (its
    spec's model: references, reward models, a critic trained in full)."""
    return objective_spec(cfg.train.objective).extra_models_bytes(cfg, n_params)


def estimate(cfg: JobConfig, n_params: int, n_trainable: int, vocab: int) -> MemoryEstimate:
    """Bytes per GPU of `cfg` (see the module docstring). Pure: config and counts in, bytes out."""
    hw, t, m = cfg.hardware, cfg.train, cfg.model
    world = hw.num_workers
    per_node = max(1, world // max(1, hw.num_nodes))
    hsdp = (hw.num_nodes > 1) if cfg.fsdp.hsdp is None else cfg.fsdp.hsdp
    shard = per_node if (t.strategy == "fsdp" and hsdp and hw.num_nodes > 1) else world
    half = t.precision == "bf16"
    dtype = 2 if half else 4
    P, T = float(n_params), float(n_trainable)
    ds = cfg.deepspeed
    zero = ds.zero_stage if t.strategy == "deepspeed" else None

    trains = objective_spec(t.objective).trains
    if not trains:  # an evaluation: the weights alone (no gradients, no optimizer state)
        state = dtype * P
    elif t.method == "full":
        if t.strategy == "ddp":
            state = 16 * P
        elif t.strategy == "fsdp":
            state = 0.0 if cfg.fsdp.cpu_offload else 16 * P / shard
        else:
            w, g, o = (2, 2, 12) if half else (4, 4, 8)
            if ds.offload_optimizer:
                o = 0
            if zero == 0:
                state = (w + g + o) * P
            elif zero == 1:
                state = (w + g) * P + o * P / world
            elif zero == 2:
                state = w * P + (g + o) * P / world
            else:
                state = (0 if ds.offload_params else w * P / world) + (g + o) * P / world
    else:
        base_bytes = 1 if m.load_8bit else dtype
        frozen = P - T
        sharded = t.strategy == "fsdp" or zero == 3
        state = base_bytes * frozen / (shard if sharded else 1) + 16 * T

    layers = max(1, m.num_layers)
    layer_params = max(0.0, P - 2 * vocab * m.hidden_size) / layers
    gathered = 2 * layer_params * dtype if (t.strategy == "fsdp" or zero == 3) else 0.0

    tokens = tokens_per_micro_batch(cfg)
    h, a, s = m.hidden_size, m.num_heads, cfg.data.max_seq_len
    # flash attention, and sdpa (which dispatches to a flash or memory-efficient kernel on
    # GPUs), never store the s x s scores; eager attention does.
    efficient = m.attn_implementation in ("flash_attention_2", "sdpa")
    per_token_layer = 34 * h + (0 if efficient else 5 * a * s)
    scale = 1.0 if half else 2.0
    if not trains:  # forwards only: one layer's activations at a time
        act = per_token_layer * tokens * scale
    elif t.activation_checkpointing:
        act = (layers * 2 * h + per_token_layer) * tokens * scale
    else:
        act = layers * per_token_layer * tokens * scale
    logits = tokens * vocab * 10.0
    base = state + gathered + act + logits
    overhead = 2 * GIB + 0.1 * base
    gpu = cfg.cost.gpus[hw.accelerator].memory_gib if hw.accelerator in cfg.cost.gpus else None
    return MemoryEstimate(state, gathered, act, logits, overhead, (gpu or 0) * GIB, tokens,
                          extra_models_bytes(cfg, n_params))  # fmt: skip


def check_fits(cfg: JobConfig, n_params: int, n_trainable: int, vocab: int) -> MemoryEstimate:
    """Refuse a GPU job that cannot fit, naming what to change.

    Raises:
        ConfigError: the estimate exceeds the GPU's memory.
    """
    est = estimate(cfg, n_params, n_trainable, vocab)
    if not est.gpu_bytes or est.fits:
        return est
    t = cfg.train
    fixes = []
    if not t.activation_checkpointing:
        fixes.append("train.activation_checkpointing=true")
    fixes.append(f"a smaller train.micro_batch_size (now {t.micro_batch_size})")
    if t.strategy == "ddp" and t.method == "full":
        fixes.append("train.strategy=fsdp (shards weights, gradients and optimizer state)")
    if t.strategy == "deepspeed" and cfg.deepspeed.zero_stage < 3:
        fixes.append("deepspeed.zero_stage=3")
    if t.method == "full":
        fixes.append("train.method=lora")
    fixes.append("more or larger GPUs (hardware block)")
    raise ConfigError(
        f"{cfg.job} ({cfg.scale}) would not fit on {cfg.hardware.accelerator}: {est.summary()}. "
        "Change: " + "; or ".join(fixes)
    )


def _check_fits_at_min(cfg: JobConfig, n_params: int, n_trainable: int, vocab: int) -> None:
    """An elastic job at its fewest nodes (hardware.nodes.min)."""
    import copy

    hw = cfg.hardware
    assert hw.nodes is not None
    small = copy.deepcopy(cfg)
    small.hardware.num_workers, small.hardware.num_nodes = hw.min_workers, hw.nodes.min
    small.hardware.nodes = None
    try:
        check_fits(small, n_params, n_trainable, vocab)
    except ConfigError as e:
        raise ConfigError(
            f"hardware.nodes.min={hw.nodes.min}: on its fewest nodes ({hw.min_workers} GPUs) "
            f"{e}; or a larger hardware.nodes.min"
        ) from None


_COUNTS: dict[tuple, tuple[int, int, int, int]] = {}


def _counts(cfg: JobConfig, vocab: int | None) -> tuple[int, int, int, int]:
    """(total, trainable, trained tensors, numbers a checkpoint holds) of the job's model with
    its method applied, counted on the meta device (no memory, no download; cached per model
    and method). A full fine-tune's checkpoint holds its state dict, where tied embeddings
    appear twice; a LoRA/adapter checkpoint holds the trained tensors."""
    key = (repr(cfg.model), cfg.train.method, repr(cfg.lora), repr(cfg.adapter), vocab)
    if key not in _COUNTS:
        import torch
        from transformers import AutoModelForCausalLM

        from orchestrator.training.methods import apply_method, count_trainable
        from orchestrator.training.model import hf_config

        with torch.device("meta"):
            model = apply_method(AutoModelForCausalLM.from_config(hf_config(cfg.model, vocab)), cfg)
        trainable, total = count_trainable(model)
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        held = (
            sum(v.numel() for v in model.state_dict().values())
            if cfg.train.method == "full"
            else trainable
        )
        _COUNTS[key] = (total, trainable, tensors, held)
    return _COUNTS[key]


def trainable_params(cfg: JobConfig, vocab: int | None = None) -> tuple[int, int]:
    """(total, trainable) parameters of the job's model with its method applied."""
    total, trainable, _, _ = _counts(cfg, vocab)
    return total, trainable


def checkpoint_counts(cfg: JobConfig, vocab: int | None = None) -> tuple[int, int]:
    """(trained tensors, numbers the module state of a checkpoint holds): the inputs of
    `checkpoint_bytes` beyond P and T."""
    _, _, tensors, held = _counts(cfg, vocab)
    return tensors, held


# What a checkpoint writes beyond the numbers themselves, measured on this project's own
# checkpoints (torch 2.13, DeepSpeed 0.19; tests/unit/test_checkpoint_size.py keeps it honest).
DCP_ITEM_BYTES = 1600.0
"""Per item of a DCP state dict, per rank holding a shard of it: its record in the rank's
.distcp file and in the shared .metadata (1.45-1.76 KB measured)."""
DCP_ITEMS_PER_TENSOR = 4
"""A trained tensor's weight, Adam's two moments and its step count."""
DCP_GROUP_ITEMS = 26
"""The optimizer's two parameter groups (decay, no decay), 13 settings each."""
RNG_BYTES_PER_RANK = 6.6e3
"""Each rank's RNG states (rng_rank<N>.pt)."""
DS_FILE_BYTES = 10e3
"""Each DeepSpeed model/optimizer file's own structure (names, shapes, engine settings)."""
DS_SCRIPTS_BYTES = 41e3
"""zero_to_fp32.py and zero_to_torch.py, which DeepSpeed copies into every checkpoint."""
MANIFEST_BYTES = 2e3


def _ranks(cfg: JobConfig) -> int:
    hw = cfg.hardware
    return hw.num_workers * (hw.gpus_per_worker if hw.accelerator != "cpu" else 1)


def checkpoint_bytes(
    cfg: JobConfig, n_params: int, n_trainable: int, n_tensors: int = 0, n_held: int | None = None
) -> float:
    """Bytes of one checkpoint, the one figure the disk check, the bill and the save-time model
    use. P parameters, T of them trained (in `n_tensors` tensors), on R ranks:

    - DCP (DDP, FSDP2) saves the parameters it holds as trained (fp32: the master copy mixed
      precision computes from) and Adam's two fp32 moments: 4 P + 8 T for a full fine-tune,
      4 T + 8 T for LoRA and adapters, whose checkpoint holds only the trained parameters
      (the frozen base is named by its digest in the manifest). Each item costs
      `DCP_ITEM_BYTES` once (DDP: replicated items are written once) or once per rank
      (FSDP2: every rank writes its shard of every item).
    - DeepSpeed saves the module in its training dtype (2 bytes in bf16/fp16; without the
      frozen base: `exclude_frozen_parameters`) and, per trained parameter, the fp32 master copy
      and both moments: 2 P + 12 T (2 T + 12 T for LoRA). Under ZeRO-3 the module's partitions
      live only in the optimizer files: 12 T.
    - every rank adds its RNG states; DeepSpeed adds its two conversion scripts.

    The overheads are kilobytes: they matter for the tiny local models, not at 7B. `n_held`,
    when counted (`checkpoint_counts`), replaces P or T as the numbers the module state holds
    (tied embeddings are saved under both names).
    """
    ranks = _ranks(cfg)
    held = (
        n_held if n_held is not None else (n_params if cfg.train.method == "full" else n_trainable)
    )
    fixed = MANIFEST_BYTES + RNG_BYTES_PER_RANK * ranks
    if cfg.train.strategy == "deepspeed":
        weight = 4.0 if cfg.train.precision == "fp32" else 2.0
        zero3 = cfg.deepspeed.zero_stage == 3
        module = 0.0 if zero3 else weight * held
        files = ranks + (ranks if zero3 else 1)  # optimizer files + model-state files
        return module + 12.0 * n_trainable + files * DS_FILE_BYTES + DS_SCRIPTS_BYTES + fixed
    shards = ranks if cfg.train.strategy == "fsdp" else 1
    items = DCP_ITEMS_PER_TENSOR * n_tensors * shards + DCP_GROUP_ITEMS
    return 4.0 * held + 8.0 * n_trainable + items * DCP_ITEM_BYTES + fixed


def disk_bytes_per_node(
    cfg: JobConfig,
    n_params: int,
    n_trainable: int,
    data_bytes: float,
    n_tensors: int = 0,
    n_held: int | None = None,
) -> float:
    """Node-local scratch one node needs: its share of a checkpoint being staged and of one
    being fetched on resume (`checkpoint_bytes`), the pretrained base when it is fetched from
    S3 (bf16), and the prepared data copy (from an S3 store)."""
    nodes = max(1, cfg.hardware.num_nodes)
    ckpt = checkpoint_bytes(cfg, n_params, n_trainable, n_tensors, n_held)
    base = 2.0 * n_params if is_object_store(cfg.model.pretrained) else 0.0
    return 2 * ckpt / nodes + base + data_bytes


def check_job(cfg: JobConfig, data_bytes: float | None = None) -> MemoryEstimate | None:
    """The GPU memory and node disk checks of a GPU job (None for CPU jobs).

    Raises:
        ConfigError: it would not fit, naming what to change.
    """
    if cfg.hardware.accelerator == "cpu":
        return None
    vocab = cfg.model.vocab_size
    total, trainable, tensors, held = _counts(cfg, vocab)
    est = check_fits(cfg, total, trainable, vocab)
    if cfg.hardware.elastic:  # fewer nodes shard over fewer GPUs: it must fit there too
        _check_fits_at_min(cfg, total, trainable, vocab)
    price = cfg.cost.instances.get(cfg.hardware.instance_type)
    if data_bytes is None:
        d = cfg.data
        data_bytes = (
            5.0 * (d.lengths.num_examples or 0) * (d.lengths.mean_tokens or 0)
        )  # int32 + mask
    need = disk_bytes_per_node(cfg, total, trainable, data_bytes, tensors, held)
    if price is not None and price.local_disk_gb and need > price.local_disk_gb * 1e9:
        raise ConfigError(
            f"{cfg.job} ({cfg.scale}) needs ~{need / 1e9:,.0f} GB of node-local scratch per node "
            f"(checkpoint staging and resume copy, base and data caches), and "
            f"{cfg.hardware.instance_type} has {price.local_disk_gb:,.0f} GB: use more nodes "
            "(hardware.num_nodes) or a type with more instance storage"
        )
    return est

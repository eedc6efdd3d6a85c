"""Step time from what a step does: FLOPs per pass at a fitted kernel efficiency, the
communication the strategy exposes, the optimizer update, and a decode regime for generation.

One pass (a micro-batch on one rank) processes `slots` token positions (padding included) and
attends over spans (a padded row's width, or each example's own length under varlen flash):

    executed FLOPs   dense: (2 forward + 2 input gradients + 2 x trained share weight gradients
                     + 2 when recomputing) x N x slots; attention: 4 L d s^2 per span forward,
                     x3 with its backward, + 1 forward when recomputing (llm-foundry's count)
    model FLOPs      what MFU counts: 6 N (or 4 N + 2 T for a frozen base) per real token and
                     12 L d s^2 per real example (no padding, no recomputation)
    compute time     dense / (peak x eff(slots, d) x framework [x int8_factor on the frozen
                     base]) + attention / (peak x eff x framework [x eager_attention_factor])
                     eff(t, d) = e_max t/(t + t_half) d/(d + d_half) x gpu_factor (KernelModel)

Communication per pass (FSDP, ZeRO-3, shard group S): the weights are all-gathered for the
forward and again for the backward, the trained gradients reduce-scattered: (2 P + G) (S-1)/S
bytes per GPU over the group's slowest link (NVLink/PCIe inside a node, the node's network
share across nodes). Prefetching overlaps it with compute: only the excess is exposed. Per step:
DDP all-reduces the gradients (2 G (W-1)/W) behind the last backward; ZeRO-1/2 reduce-scatter
the gradients and all-gather the updated weights; HSDP all-reduces each shard's gradients
across nodes. The optimizer reads and writes ~20 bytes per local trained parameter at the
device's memory bandwidth. A decode step of generation reads every weight (and the KV cache)
once per token: memory-bound until the batch is large enough to be compute-bound.

Pure functions: numbers in, seconds out; `estimator.py` feeds them the job and its batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.config.schema import KernelModel

ADAM_BYTES_PER_PARAM = 20.0
"""fp32 weight, two moments read and written, bf16 gradient read: ~20 bytes per update."""


@dataclass(frozen=True)
class ModelShape:
    n_params: int
    n_trainable: int
    n_layers: int
    d_model: int
    n_tensors: int = 0
    """Trained parameter tensors (a checkpoint's per-item overhead)."""
    n_held: int | None = None
    """Numbers a checkpoint's module state holds (None: P for full fine-tunes, else T)."""


@dataclass(frozen=True)
class Device:
    """One worker's device and the job's parallel layout."""

    peak_flops: float
    kernel: KernelModel
    gpu: str
    """The key of kernel.gpu_factor ("cpu" for CPU workers)."""
    framework: float = 1.0
    memory_bytes_per_s: float | None = None
    world: int = 1
    gpus_per_node: int = 1
    nodes: int = 1
    link_bytes_per_s: float | None = None
    """Per GPU, inside a node."""
    network_bytes_per_s: float | None = None
    """Per node, across nodes."""


@dataclass(frozen=True)
class Regime:
    """How the job runs: method, recomputation, 8-bit base, attention kernel, strategy."""

    method: str = "full"
    recompute: bool = False
    load_8bit: bool = False
    attention: str = "flash"
    strategy: str = "fsdp"
    """ddp | fsdp | hsdp | zero1 | zero2 | zero3"""
    param_bytes: int = 2
    """Bytes per weight as communicated (bf16: 2, fp32: 4)."""


@dataclass(frozen=True)
class Pass:
    """One micro-batch on one rank."""

    slots: int
    """Token positions processed (rows x width, or the flat packed length)."""
    attn_sq: float
    """Sum over attention spans of span length squared."""
    real: int
    """Real (not padding) tokens."""
    real_sq: float
    """Sum over examples of their length squared (what MFU counts for attention)."""


def efficiency(k: KernelModel, gpu: str, tokens: float, width: int) -> float:
    """The share of peak FLOP/s a pass of `tokens` positions at model width `width` reaches."""
    if tokens <= 0:
        return 0.0
    return (
        k.e_max
        * (1.0 if math.isinf(tokens) else tokens / (tokens + k.t_half))
        * width / (width + k.d_half)
        * k.gpu_factor.get(gpu, 1.0)
    )  # fmt: skip


def trained_share(m: ModelShape) -> float:
    return m.n_trainable / max(1, m.n_params)


def pass_flops(m: ModelShape, r: Regime, p: Pass) -> tuple[float, float, float]:
    """(dense executed, attention executed, model) FLOPs of a pass."""
    n, share = float(m.n_params), trained_share(m)
    dense_per_slot = (4.0 + 2.0 * share + (2.0 if r.recompute else 0.0)) * n
    attn_fwd = 4.0 * m.n_layers * m.d_model * p.attn_sq
    attn = attn_fwd * (3.0 + (1.0 if r.recompute else 0.0))
    model_dense = (6.0 if r.method == "full" else 4.0 + 2.0 * share) * n * p.real
    model = model_dense + 12.0 * m.n_layers * m.d_model * p.real_sq
    return dense_per_slot * p.slots, attn, model


def compute_s(m: ModelShape, r: Regime, d: Device, p: Pass) -> float:
    """Seconds of arithmetic in a pass (no communication)."""
    if p.slots <= 0:
        return 0.0
    eff = efficiency(d.kernel, d.gpu, p.slots, m.d_model) * d.framework
    dense, attn, _ = pass_flops(m, r, p)
    if r.load_8bit:  # the frozen base's matmuls run through int8 kernels
        frozen = (1.0 - trained_share(m)) * dense
        dense_s = (dense - frozen) / (d.peak_flops * eff) + frozen / (
            d.peak_flops * eff * d.kernel.int8_factor
        )
    else:
        dense_s = dense / (d.peak_flops * eff)
    attn_eff = eff * (1.0 if r.attention == "flash" else d.kernel.eager_attention_factor)
    return dense_s + attn / (d.peak_flops * attn_eff)


def _group_bw(d: Device, group: int) -> float:
    """Per-GPU collective bandwidth of a group of `group` ranks (ring over its slowest link)."""
    link = d.link_bytes_per_s or float("inf")
    if group <= d.gpus_per_node or d.nodes <= 1:
        return link
    net = (d.network_bytes_per_s or float("inf")) / max(1, d.gpus_per_node)
    return min(link, net)


def shard_group(r: Regime, d: Device) -> int:
    """Ranks a sharded strategy shards the weights over (HSDP: one node's)."""
    return d.gpus_per_node if r.strategy == "hsdp" else d.world


def pass_comm_s(m: ModelShape, r: Regime, d: Device) -> float:
    """Communication seconds of one pass (sharded strategies: gather weights twice, scatter the
    trained gradients)."""
    if r.strategy not in ("fsdp", "hsdp", "zero3"):
        return 0.0
    s = shard_group(r, d)
    if s <= 1:
        return 0.0
    grad_bytes = 2.0  # bf16 gradients on the wire (fp32 runs: param_bytes)
    moved = 2.0 * r.param_bytes * m.n_params + max(grad_bytes, r.param_bytes) * m.n_trainable
    return moved * (s - 1) / s / _group_bw(d, s)


def step_comm_s(m: ModelShape, r: Regime, d: Device, last_backward_s: float) -> float:
    """Exposed communication once per step (after the last backward)."""
    g = float(max(2, r.param_bytes)) * m.n_trainable
    w = d.world
    if w <= 1:
        return 0.0
    if r.strategy == "ddp":
        ring = 2.0 * g * (w - 1) / w / _group_bw(d, w)
        return max(0.0, ring - last_backward_s)  # bucketed: overlaps the last backward
    if r.strategy in ("zero1", "zero2"):
        scatter = g * (w - 1) / w / _group_bw(d, w)
        gather = r.param_bytes * m.n_params * (w - 1) / w / _group_bw(d, w)
        return max(0.0, scatter - last_backward_s) + gather
    if r.strategy == "hsdp" and d.nodes > 1:
        shard = shard_group(r, d)
        replicas = max(1, w // shard)
        per_gpu = (d.network_bytes_per_s or float("inf")) / max(1, d.gpus_per_node)
        return 2.0 * g / shard * (replicas - 1) / replicas / per_gpu
    return 0.0


def optimizer_s(m: ModelShape, r: Regime, d: Device) -> float:
    """The optimizer update: memory-bound, over the trained parameters this rank holds."""
    if not d.memory_bytes_per_s:
        return 0.0
    local = m.n_trainable / (d.world if r.strategy != "ddp" else 1)
    return local * ADAM_BYTES_PER_PARAM / d.memory_bytes_per_s


def step_s(m: ModelShape, r: Regime, d: Device, ranks: list[list[Pass]]) -> float:
    """Seconds of one optimizer step whose passes are `ranks[r][k]` (every rank runs the same
    number of passes; pass k waits for the slowest rank's pass k: sharded strategies meet in
    collectives inside every pass)."""
    n = max((len(x) for x in ranks), default=0)
    comm = pass_comm_s(m, r, d)
    total = last = 0.0
    for k in range(n):
        worst = 0.0
        for passes in ranks:
            c = compute_s(m, r, d, passes[k]) if k < len(passes) else 0.0
            worst = max(worst, c + max(0.0, comm - c))  # prefetch hides comm under compute
            last = c
        total += worst
    backward_share = 2.0 / 3.0  # the backward is ~2/3 of a pass: what gradient sync can hide
    return total + step_comm_s(m, r, d, backward_share * last) + optimizer_s(m, r, d)


def decode_step_s(
    m: ModelShape, d: Device, batch: int, context: int, weight_bytes: float = 2.0
) -> float:
    """Seconds of one decode step of `batch` sequences at `context` tokens of KV cache (one
    device holding the model), which yields `batch` tokens: every weight and the cache are
    read once, and the step's FLOPs run at the kernel efficiency of a `batch`-token pass; the
    slower of the two sets the time."""
    kv_bytes = 2.0 * m.n_layers * m.d_model * 2.0 * context * batch  # K and V, bf16
    read = m.n_params * weight_bytes + kv_bytes
    mem_s = read / d.memory_bytes_per_s if d.memory_bytes_per_s else 0.0
    flops = (2.0 * m.n_params + 4.0 * m.n_layers * m.d_model * context) * batch
    # A roofline: the small-pass penalty of the training kernel model (t_half) is itself the
    # memory bound at work, so the compute side runs at the kernel's large-pass efficiency.
    eff = efficiency(d.kernel, d.gpu, float("inf"), m.d_model) * d.framework
    return max(mem_s, flops / (d.peak_flops * eff))

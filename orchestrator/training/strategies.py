"""How the model is spread over the workers: DDP, FSDP2 or DeepSpeed ZeRO, behind one switch.

Each strategy owns the wrapped model and its optimizer and answers the same few calls, so the
training loop reads the same for all three:

    with strategy.autocast():
        loss = loss_fn(strategy.model, batch)
    strategy.backward(loss, last_micro_batch)      # gradients averaged over ranks
    grad_norm = strategy.step(lr, max_norm)          # clip, update, zero grads

Gradients are averaged over ranks in every strategy (DDP all-reduce, FSDP reduce-scatter,
DeepSpeed's averaging), and DeepSpeed is told not to divide by its accumulation steps, so one loss
scaling in the loop gives identical updates everywhere.

Checkpoints: DDP and FSDP write torch.distributed.checkpoint (DCP) shards, which reshard to
another worker count on load; DeepSpeed writes its own ZeRO checkpoint (same worker count only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from orchestrator.checkpoint.hashing import SaveTarget
from orchestrator.config.schema import JobConfig
from orchestrator.training.methods import decoder_layers


class Strategy(Protocol):
    name: str
    model: torch.nn.Module

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None: ...

    def step(self, lr: float, max_norm: float | None) -> float: ...

    def write_checkpoint(self, target: SaveTarget, group: Any = None) -> Any: ...

    def read_checkpoint(self, folder: Path) -> None: ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None: ...

    def iter_full_tensors(
        self, names: set[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor | None]]: ...

    def load_full_state_dict(self, state: dict[str, torch.Tensor] | None) -> None: ...


def _param_groups(model, cfg: JobConfig) -> list[dict[str, Any]]:
    """Decay matrices, not norms and biases (as HF Trainer). Trainable parameters only. Under
    muP the hidden matrices get their own group with `lr_scale` = base width / width."""
    from orchestrator.training.model import mup_lr_scale

    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (is_matrix(p), mup_lr_scale(name, cfg.model))
            groups.setdefault(key, []).append(p)
    wd = cfg.optim.weight_decay
    return [
        {"params": ps, "weight_decay": wd if matrix else 0.0, "lr_scale": scale}
        for (matrix, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]


def is_matrix(p: torch.Tensor) -> bool:
    """A weight matrix (decayed), by its whole shape: a ZeRO-3 partitioned parameter's `.data`
    is an empty 1-D tensor, its real shape is `ds_shape`."""
    return len(getattr(p, "ds_shape", p.shape)) >= 2


def _adamw(model, cfg: JobConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.AdamW(_param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _materialize(model, device: str) -> None:
    """A model built on `meta` gets real (uninitialised) storage on `device`, and the buffers no
    state dict carries are recomputed. Its values come next: from a checkpoint, or from
    `load_full_state_dict` (a broadcast from rank 0)."""
    from orchestrator.training.model import init_non_persistent_buffers

    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)
        init_non_persistent_buffers(model)


def _to_float(x) -> float:
    if x is None:
        return float("nan")
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """{name: tensor} of the trainable parameters only (LoRA, adapters, a score or value head),
    named as `get_optimizer_state_dict` names them (no DDP `module.` prefix). The tensors share
    the parameters' storage (FSDP2: their local DTensor shards), so DCP loads into them in
    place. Built from `named_parameters`, never from `state_dict()`: an 8-bit base's
    `Linear8bitLt` writes `SCB`/`weight_format` entries that are not attributes, which DCP's
    `get_state_dict` looks up (and fails on) even with `ignore_frozen_params`."""
    module = getattr(model, "module", model)
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


class _DcpStrategy:
    """Shared by DDP and FSDP2: torch optimizer, DCP checkpoints.

    A checkpoint holds what training changes: every parameter of a full fine-tune, only the
    trainable ones (and their optimizer state) of a LoRA or adapter job, whose frozen base is
    named in the manifest (`base`) and loaded from where it came from on resume."""

    name = "dcp"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainable_only: bool = False

    def _checkpoint_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, get_state_dict

        if self.trainable_only:
            model_sd = trainable_state_dict(self.model)
            optim_sd = get_optimizer_state_dict(self.model, self.optimizer)
        else:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def autocast(self):
        return contextlib.nullcontext()

    def step(self, lr: float, max_norm: float | None) -> float:
        _set_lr(self.optimizer, lr)
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return _to_float(norm)

    def write_checkpoint(self, target: SaveTarget, group: Any = None) -> Any:
        """This rank's DCP shards into `target` (hashed as written). With a process group,
        `dcp.async_save`: the state is staged in CPU memory, the files are written in a
        background thread on that group, and a future is returned; training is blocked only
        for the copy."""
        import torch.distributed.checkpoint as dcp

        state = self._checkpoint_state()
        if group is not None:
            return dcp.async_save(state, storage_writer=target.dcp_writer(), process_group=group)
        dcp.save(state, storage_writer=target.dcp_writer())
        return None

    def checkpoint_files(self, ensure: Callable[[list[str]], Path]) -> dict[str, list]:
        """The byte ranges of the `.distcp` files `read_checkpoint` will read on this rank (its
        load plan against the checkpoint's metadata, which `ensure` fetches and verifies
        first)."""
        from orchestrator.checkpoint.fetch import dcp_plan_reads

        folder = ensure([".metadata"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        return dcp_plan_reads(self._checkpoint_state(), folder / ".metadata", rank)

    def read_checkpoint(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict, set_state_dict

        state = self._checkpoint_state()
        dcp.load(state, checkpoint_id=str(folder))
        if self.trainable_only:  # the parameters were loaded in place; the base is the base
            set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optim"])
            return
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )

    def load_full_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        """Collective: rank 0 passes the full state dict, the others None; every rank ends with
        its part of it (FSDP: its shards; DDP: the whole), broadcast from rank 0, so the weights
        are read from disk once per job, not once per GPU."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(
            self.model,
            state or {},
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        )

    def iter_full_tensors(
        self, names: set[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor | None]]:
        """(name, the whole tensor on rank 0 / None elsewhere), one tensor at a time, in
        state-dict order (only `names`, when given). Collective: a sharded tensor is
        all-gathered only when its turn comes, so no rank ever holds more than one of them
        besides its shards."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        for name, value in self.model.state_dict().items():
            if names is not None and name.removeprefix("module.") not in names:
                continue
            if hasattr(value, "full_tensor"):
                value = value.full_tensor()
            yield name.removeprefix("module."), (value.detach().cpu() if rank == 0 else None)
            del value

    def full_state_dict(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return sd if dist.get_rank() == 0 else None


class DdpStrategy(_DcpStrategy):
    """torch DistributedDataParallel: a full replica per worker, gradients all-reduced."""

    name = "ddp"

    def __init__(self, model, cfg: JobConfig) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.bf16 = cfg.train.precision == "bf16"
        self.trainable_only = cfg.train.method != "full"
        device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        _materialize(model, "cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available() and not cfg.model.load_8bit:  # 8-bit: placed at load
            model = model.cuda()
        self.model = DistributedDataParallel(model, device_ids=device_ids)
        self.optimizer = _adamw(self.model, cfg)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # All-reduce gradients only on the last micro-batch of the step.
        ctx = contextlib.nullcontext() if last_micro_batch else self.model.no_sync()
        with ctx:
            loss.backward()


def fsdp_mesh_shape(world: int, num_nodes: int, hsdp: bool | None) -> tuple[int, ...]:
    """The FSDP device mesh: (world,) shards over every rank; with HSDP (replicate, shard)
    shards within a node and replicates across nodes, so the per-layer all-gathers and
    reduce-scatters stay on the node's fast links (NVLink) and only one gradient all-reduce per
    step crosses the network. Default (hsdp None): HSDP when there is more than one node."""
    use = (num_nodes > 1) if hsdp is None else hsdp
    if not use or num_nodes <= 1:
        return (world,)
    if world % num_nodes:
        raise ValueError(f"HSDP needs the same number of workers on every node: {world} workers "
                         f"on {num_nodes} nodes")  # fmt: skip
    return (num_nodes, world // num_nodes)


def materialize_device(device: str, cpu_offload: bool) -> str:
    """Where a meta-built model's shards get their storage: in CPU memory when FSDP2 offloads
    them (its offload policy checks, at the first forward, that sharded parameters are on the
    CPU: shards materialised on the GPU fail there), else on the worker's device."""
    return "cpu" if cpu_offload else device


def offload_pins_memory() -> bool:
    """FSDP2's CPU offload pins host memory for fast copies to the GPU; pinning needs an
    accelerator (`CPUOffloadPolicy()` pins by default, which on a CPU-only host raises "Cannot
    access accelerator device when none is available")."""
    return torch.cuda.is_available()


class FsdpStrategy(_DcpStrategy):
    """torch FSDP2: `fully_shard` on every decoder layer, then on the root; HSDP (a 2-D mesh:
    shard within a node, replicate across nodes) on multi-node clusters."""

    name = "fsdp"

    def __init__(self, model, cfg: JobConfig) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.trainable_only = cfg.train.method != "full"
        world = dist.get_world_size()  # an elastic run's nodes now, not its maximum
        nodes = -(-world // cfg.hardware.workers_per_node)
        shape = fsdp_mesh_shape(world, nodes, cfg.fsdp.hsdp)
        self.hsdp = len(shape) == 2
        names = ("replicate", "shard") if self.hsdp else ("shard",)
        mesh = init_device_mesh(device, shape, mesh_dim_names=names)
        kwargs: dict[str, Any] = {
            "mesh": mesh,
            "reshard_after_forward": cfg.fsdp.reshard_after_forward,
        }
        if cfg.train.precision == "bf16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        if cfg.fsdp.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=offload_pins_memory())
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)  # on meta too: each rank then allocates only its shards
        _materialize(model, materialize_device(device, cfg.fsdp.cpu_offload))
        self.model = model
        self.optimizer = _adamw(model, cfg)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # Reduce-scatter every micro-batch: skipping it (set_requires_gradient_sync(False)) would
        # keep the whole model's unsharded fp32 gradients on every rank until the last one
        # (~48 GiB per GPU for 13B), and token-budget batching gives most steps several
        # micro-batches. What can wait is HSDP's all-reduce across nodes (the replicas).
        if self.hsdp:
            self.model.set_requires_all_reduce(last_micro_batch)
        loss.backward()


def deepspeed_config(cfg: JobConfig, world_size: int) -> dict[str, Any]:
    """Our config mapped onto DeepSpeed's, so the hyperparameters mean the same thing."""
    ds, o = cfg.deepspeed, cfg.optim
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    # DeepSpeed checks train_batch_size = micro x accumulation x world at start-up; our
    # backward sets each accumulation boundary itself, so these only need to agree (an RL
    # step's micro-batches count completions, not the global batch's prompts).
    accum = max(1, cfg.train.global_batch_size // (cfg.train.micro_batch_size * world_size))
    conf: dict[str, Any] = {
        "train_batch_size": cfg.train.micro_batch_size * accum * world_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": o.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if _uses_ds_optimizer(cfg):
        conf["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,
            },
        }
    return conf


def _uses_ds_optimizer(cfg: JobConfig) -> bool:
    ds = cfg.deepspeed
    if ds.optimizer == "auto":
        return ds.offload_optimizer or ds.offload_params
    return ds.optimizer == "deepspeed"


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 0-3 with optional CPU offload (its CPU accelerator + gloo here)."""

    name = "deepspeed"
    TAG = "ds"

    def __init__(self, model, cfg: JobConfig) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        conf = deepspeed_config(cfg, dist.get_world_size())
        groups = _param_groups(model, cfg)
        optimizer = None if _uses_ds_optimizer(cfg) else _adamw(model, cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=optimizer, config=conf
        )
        self.model = self.engine
        self.zero_stage = cfg.deepspeed.zero_stage
        self.trainable_only = cfg.train.method != "full"

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed keeps bf16 weights itself

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # The number of micro-batches can change from step to step (token-budget batching), so
        # the accumulation boundary is set explicitly instead of counted by DeepSpeed.
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        # Our loss is already scaled for accumulation: DeepSpeed must not divide it again.
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, lr: float, max_norm: float | None) -> float:
        assert self.engine.is_gradient_accumulation_boundary()
        _set_lr(self.optimizer, lr)
        self.engine.step()
        return _to_float(self.engine.get_global_grad_norm())

    def write_checkpoint(self, target: SaveTarget, group: Any = None) -> Any:
        """DeepSpeed writes synchronously (its files are hashed when persisted)."""
        self.engine.save_checkpoint(
            str(target.folder), tag=self.TAG, save_latest=False,
            exclude_frozen_parameters=self.trainable_only,
        )  # fmt: skip
        return None

    def read_checkpoint(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(folder), tag=self.TAG, load_lr_scheduler_states=False,
            load_module_strict=not self.trainable_only,  # LoRA/adapter: the base is not in it
        )  # fmt: skip
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")

    def iter_full_tensors(
        self, names: set[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor | None]]:
        """One parameter gathered at a time (ZeRO-3: GatheredParameters of that parameter only),
        then the persistent buffers; rank 0 gets each whole tensor, the others None."""
        import deepspeed

        module = self.engine.module
        rank = dist.get_rank()
        for name, p in module.named_parameters():
            if names is not None and name not in names:
                continue
            ctx = (
                deepspeed.zero.GatheredParameters([p], modifier_rank=None)
                if self.zero_stage == 3
                else contextlib.nullcontext()
            )
            with ctx:  # the gathered tensor itself: valid until the next item is requested
                yield name, (p.detach().cpu() if rank == 0 else None)
        for name, b in module.named_buffers():
            if names is not None:
                break
            if name.rsplit(".", 1)[-1] not in getattr(
                module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module,
                "_non_persistent_buffers_set",
                set(),
            ):
                yield name, (b.detach().cpu() if rank == 0 else None)

    def full_state_dict(self):
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        ctx = (
            deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            if self.zero_stage == 3
            else contextlib.nullcontext()
        )
        with ctx:
            if dist.get_rank() != 0:
                return None
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


STRATEGIES = {"ddp": DdpStrategy, "fsdp": FsdpStrategy, "deepspeed": DeepSpeedStrategy}


def build_strategy(model, cfg: JobConfig) -> Strategy:
    return STRATEGIES[cfg.train.strategy](model, cfg)

"""Export a trained model as a Hugging Face folder that `from_pretrained` loads.

- full: `export/` is a plain model folder (+ tokenizer), safetensors sharded by layer.
- lora with `export.merge_lora`: the adapter is merged into the weights: a plain model folder,
  and the adapter alone beside it in `export/adapter/`.
- lora without merging, and adapter (LLaMA-Adapter cannot be merged): `export/adapter/` is a peft
  adapter folder and `export/base/` the frozen base it applies to (only for random-init bases;
  a pretrained base is named by its durable URL or id in the adapter's config).

Whether an export is a model or an adapter is whether `export/config.json` exists. Every export
ends with `model_manifest.json` (checkpoint/exports.py): each file's size and SHA-256, the
shards' hashed while they are written.

An 8-bit base (`model.load_8bit`) is merged from its original weights, read tensor by tensor
from `model.pretrained` (as TRL's merge script loads the base in its own precision), never from
the int8 codes training ran on: adding B·A to the codes, or to `CB·SCB/127`, would bake the
quantisation error into every merged layer. Only when the original files cannot be found is the
int8 weight dequantised, and the export says so (`export_note` in its config).

`export_sharded` writes it layer by layer: the strategy gathers one tensor at a time
(`iter_full_tensors`, collective), rank 0 merges LoRA weights as their parts arrive and writes a
safetensors shard per layer, in the training dtype (bf16 on GPUs). No rank ever holds the whole
model (a ZeRO-3 export used to gather every parameter on every GPU; an FSDP one re-loaded the
base in fp32 on rank 0), and nothing is re-read from disk. Sample generations need the model
in memory: they are made only up to `SAMPLE_MAX_PARAMS` (on CPU here), and skipped above it,
saying so.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import JobConfig
from orchestrator.training.methods import apply_method
from orchestrator.training.model import build_model


def export_hf(
    state_dict: dict[str, torch.Tensor],
    cfg: JobConfig,
    vocab_size: int,
    tokenizer_dir: Path,
    out: Path,
    base_ref: str | None = None,
) -> Path:
    """Rebuild the model on CPU, load the gathered weights (strictly) and save it under `out`.
    `base_ref` names the pretrained base in an adapter export (its durable URL or hub id, not
    the node-local copy training read)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = apply_method(build_model(cfg.model, vocab_size), cfg)
    model.load_state_dict(state_dict, strict=True)
    method = cfg.train.method
    if method == "full" or (method == "lora" and cfg.export.merge_lora):
        if method == "lora":
            model = model.merge_and_unload()
        if cfg.model.mup_base_width is not None:
            model = fold_mup(model, cfg)
        model.save_pretrained(out)
        _copy_tokenizer(tokenizer_dir, out)
        return model
    if base_ref:
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = base_ref
    model.save_pretrained(out / "adapter")
    if not cfg.model.pretrained:  # the base is ours (random init): ship it with the adapter
        build_model(cfg.model, vocab_size).save_pretrained(out / "base")
        _copy_tokenizer(tokenizer_dir, out / "base")
    return model


SAMPLE_MAX_PARAMS = 1_000_000_000
"""Above this size, sample generations are skipped (they would load the model on one CPU)."""
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")
_PEFT_PREFIX = "base_model.model."


def export_mode(cfg: JobConfig) -> str:
    """ "model" (a plain folder: full fine-tune, merged LoRA) or "adapter" (a peft folder)."""
    m = cfg.train.method
    return "model" if m == "full" or (m == "lora" and cfg.export.merge_lora) else "adapter"


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class OriginalWeights:
    """The base's own tensors, read one at a time from its safetensors files (a folder, or the
    Hugging Face cache of a hub id that training loaded). Names are looked up as they are, and
    with or without the causal LM's `model.` prefix."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            weight_map = {}
            for f in sorted(folder.glob("*.safetensors")):
                with safe_open(str(f), "pt") as h:
                    weight_map.update({k: f.name for k in h.keys()})  # noqa: SIM118
        if not weight_map:
            raise FileNotFoundError(f"{folder}: no safetensors weights")
        self.weight_map: dict[str, str] = weight_map
        self._open: dict[str, Any] = {}

    @classmethod
    def find(cls, ref: str | None, revision: str | None = None) -> OriginalWeights | None:
        """The original weights of `ref` on this machine, or None (not safetensors, not here)."""
        if not ref:
            return None
        folder = Path(ref)
        if not folder.is_dir():
            try:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(ref, revision=revision, local_files_only=True))
            except Exception:  # noqa: BLE001 - not in the cache: the caller dequantises
                return None
        try:
            return cls(folder)
        except (FileNotFoundError, OSError, KeyError, ValueError):
            return None

    def get(self, name: str) -> torch.Tensor | None:
        from safetensors import safe_open

        for key in (name, name.removeprefix("model."), f"model.{name}"):
            fname = self.weight_map.get(key)
            if fname is None:
                continue
            if fname not in self._open:
                self._open[fname] = safe_open(str(self.folder / fname), "pt")
            return self._open[fname].get_tensor(key)
        return None


def dequantize_int8(codes: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    """LLM.int8 row-wise dequantisation: W ~ CB * SCB / 127 (each output row's absmax)."""
    return codes.float() * (scb.float().unsqueeze(1) / 127.0)


class _ShardWriter:
    """safetensors files of one layer each (and one per run of non-layer tensors), with the
    index transformers reads. Each tensor goes to disk as it arrives (the shard's data is
    written to a side file, then the header and the data make the shard), so the writer holds
    no tensor: memory is the one tensor being converted. The format is safetensors' own
    (8-byte little-endian header length, a JSON header of dtype/shape/offsets, raw row-major
    bytes); `safetensors.torch.save_file` would first build the whole shard in memory."""

    def __init__(self, out: Path, dtype: torch.dtype) -> None:
        self.out, self.dtype = out, dtype
        self.key: str | None = None
        self.entries: dict[str, dict] = {}
        self.data = None
        self.offset = 0
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.n = 0
        self.hashed: dict[str, dict[str, Any]] = {}
        """{file: {bytes, sha256}} of the shards, hashed as they were written."""

    def add(self, name: str, t: torch.Tensor) -> None:
        m = _LAYER.search(name)
        key = m.group(1) if m else "other"
        if self.entries and key != self.key:
            self._flush()
        self.key = key
        if self.data is None:
            self.data = (self.out / ".shard.data").open("wb")
            self.offset = 0
        t = (t.to(self.dtype) if t.is_floating_point() else t).contiguous()
        nbytes = t.numel() * t.element_size()
        if nbytes:
            self.data.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self.offset, self.offset + nbytes],
        }
        self.offset += nbytes

    def _flush(self) -> None:
        import struct

        self.n += 1
        fname = f"model-{self.n:05d}.safetensors"
        self.data.close()
        header = json.dumps(
            {"__metadata__": {"format": "pt"}, **self.entries}, separators=(",", ":")
        ).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned
        side = self.out / ".shard.data"
        sha = hashlib.sha256()
        n = 0
        with (self.out / fname).open("wb") as f, side.open("rb") as src:
            for chunk in (struct.pack("<Q", len(header)), header):
                f.write(chunk)
                sha.update(chunk)
                n += len(chunk)
            while chunk := src.read(16 << 20):
                f.write(chunk)
                sha.update(chunk)
                n += len(chunk)
        side.unlink()
        self.hashed[fname] = {"bytes": n, "sha256": sha.hexdigest()}
        for k, e in self.entries.items():
            self.weight_map[k] = fname
            self.total += e["data_offsets"][1] - e["data_offsets"][0]
        self.entries, self.data = {}, None

    def close(self) -> None:
        if self.entries:
            self._flush()
        index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def export_sharded(
    tensors: Iterator[tuple[str, torch.Tensor | None]],
    model,
    cfg: JobConfig,
    tokenizer_dir: Path,
    out: Path,
    rank: int,
    base_ref: str | None = None,
    mode: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Consume the collective tensor stream (every rank must); rank 0 writes the folder.
    `model` is this rank's (wrapped or sharded) model, for its config and peft settings. A
    streamed tensor is only valid until the next one is requested (a ZeRO-3 gather is
    released then): what is kept longer is copied. Returns {file: {bytes, sha256}} of what was
    hashed while written (for the model manifest). `mode`: "model" or "adapter" (default:
    `export_mode(cfg)`; a reward model is always merged)."""
    if rank != 0:
        for _ in tensors:
            pass
        return {}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    peft = getattr(model, "peft_config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (mode or export_mode(cfg)) == "adapter":
        sd = {name: t.clone() for name, t in tensors if t is not None}  # small: trained only
        _save_adapter(model, sd, out / "adapter", base_ref)
        if not cfg.model.pretrained:  # a random-init base (tests, from scratch): ship it
            build_model(cfg.model, base.config.vocab_size).save_pretrained(out / "base")
            _copy_tokenizer(tokenizer_dir, out / "base")
        return {}
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    merged = _MergedWeights(_ShardWriter(out, dtype), cfg, bool(peft), base.config)
    for full_name, t in tensors:
        merged.take(full_name, t)
    merged.close()
    _save_config(base, dtype, merged.dequantized, cfg.model.pretrained, out)
    _copy_tokenizer(tokenizer_dir, out)
    if any(".lora_" in k for k in merged.adapter):  # the adapter alone too: what TRL users publish
        _save_adapter(model, merged.adapter, out / "adapter", base_ref)
    return dict(merged.writer.hashed)


class _MergedWeights:
    """The stream of a trained model's tensors, written as the plain model they make: LoRA
    pairs merged into their base weights (W + B A * alpha/r), int8 weights replaced by the
    base's original ones (or dequantised from their codes and scales), peft's trained copies
    under their plain names, a tied head left out. What the adapter alone needs is kept aside
    (`adapter`)."""

    def __init__(self, writer: _ShardWriter, cfg: JobConfig, peft: bool, config) -> None:
        self.writer = writer
        self.scale = (cfg.lora.alpha / cfg.lora.r) if peft and cfg.train.method == "lora" else 1.0
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.original = OriginalWeights.find(cfg.model.pretrained, cfg.model.revision) if (
            cfg.model.load_8bit
        ) else None  # fmt: skip
        self.dequantized: list[str] = []
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.adapter: dict[str, torch.Tensor] = {}
        self.codes: dict[str, torch.Tensor] = {}  # int8 weights waiting for their SCB (no original)

    def take(self, full_name: str, t: torch.Tensor) -> None:
        """One streamed tensor (valid only until the next: what is kept longer is copied)."""
        name = full_name.removeprefix(_PEFT_PREFIX)
        if ".original_module." in name:  # peft modules_to_save: the trained copy is the one
            return
        if ".modules_to_save." in name:  # e.g. a reward model's score head, trained in full
            self.adapter[full_name] = t.clone()
            name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
        if name.endswith((".SCB", ".weight_format")):  # bitsandbytes' int8 bookkeeping
            if name.endswith(".SCB"):
                self._scales(name.rsplit(".", 1)[0].removesuffix(".base_layer"), t)
        elif ".lora_A." in name or ".lora_B." in name or ".base_layer." in name:
            self._lora_part(full_name, name, t)
        elif self.tied and name == "lm_head.weight":
            return
        elif name.endswith(".weight") and t.dtype == torch.int8:  # a frozen int8 linear
            w = self._base_weight(name.removesuffix(".weight"), t)
            if w is not None:
                self.writer.add(name, w)
        else:
            self.writer.add(name, t)

    def _scales(self, module: str, scb: torch.Tensor) -> None:
        """An int8 layer's scales: its weight, waiting in `codes`, dequantised with them."""
        if module not in self.codes:
            return  # its original weight was written instead
        self.dequantized.append(module)
        w = dequantize_int8(self.codes.pop(module), scb)
        if module in self.pending:  # a LoRA linear: merge into the dequantised weight
            self.pending[module]["weight"] = w
            _merge_ready(self.pending, module, self.scale, self.writer)
        else:
            self.writer.add(f"{module}.weight", w)

    def _lora_part(self, full_name: str, name: str, t: torch.Tensor) -> None:
        """A LoRA linear's A, B, base weight or bias: merged and written once all are in."""
        module, part = _lora_part(name)
        if part in ("A", "B"):
            self.adapter[full_name] = t.clone()
        got = self.pending.setdefault(module, {})
        if part == "weight":
            w = self._base_weight(module, t)
            if w is None:
                return
            got[part] = w.clone()
        else:
            got[part] = t.clone()  # kept past this item: the stream may reuse its tensor
        _merge_ready(self.pending, module, self.scale, self.writer)

    def _base_weight(self, module: str, t: torch.Tensor) -> torch.Tensor | None:
        """The frozen weight of `module`: `t` itself, or for an int8 one the original (None:
        wait for the SCB that comes next in the stream, and dequantise)."""
        if t.dtype != torch.int8:
            return t
        w = self.original.get(f"{module}.weight") if self.original is not None else None
        if w is None:
            self.codes[module] = t.clone()
        return w

    def close(self) -> None:
        for module, got in self.pending.items():  # a bias that arrived after its weights
            for part, t in got.items():
                self.writer.add(f"{module}.{part}", t)
        self.writer.close()


def _save_config(base, dtype: torch.dtype, dequantized: list[str], pretrained, out: Path) -> None:
    """The exported model's config.json: a plain model in the export's dtype."""
    config = base.config
    config.torch_dtype = dtype
    config.architectures = [type(base).__name__]
    if getattr(config, "quantization_config", None) is not None:  # trained in 8-bit, saved plain
        del config.quantization_config
    if dequantized:
        config.export_note = (
            f"{len(dequantized)} int8 layers were dequantised (CB*SCB/127): the base's "
            f"original weights were not found ({pretrained})"
        )
        print(f"warning: {config.export_note}", flush=True)
    config.save_pretrained(out)


def export_whole(
    model, cfg: JobConfig, tokenizer_dir: Path, out: Path, base_ref: str | None, mode: str
) -> dict[str, dict[str, Any]]:
    """`export_sharded` of a model this rank holds whole (DDP and ZeRO 0-2 stages: reward
    models, PPO policies), one tensor at a time to the CPU."""
    if mode == "adapter":  # only what was trained (peft keeps the adapter's keys of it)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        items = ((n, t) for n, t in model.state_dict().items() if n in trained)
    else:
        items = iter(model.state_dict().items())
    stream = ((n, t.detach().cpu()) for n, t in items)
    return export_sharded(stream, model, cfg, tokenizer_dir, out, 0, base_ref, mode)


def _merge_ready(
    pending: dict[str, dict[str, torch.Tensor]], module: str, scale: float, writer: _ShardWriter
) -> None:
    """Write a LoRA linear once its base weight and both factors are here: W + scale * B A."""
    got = pending[module]
    if not {"weight", "A", "B"} <= set(got):
        return
    w = got.pop("weight").float() + scale * (got.pop("B").float() @ got.pop("A").float())
    writer.add(f"{module}.weight", w)
    if "bias" in got:
        writer.add(f"{module}.bias", got.pop("bias"))
    if not got:
        pending.pop(module)


def _save_adapter(model, sd: dict[str, torch.Tensor], out: Path, base_ref: str | None) -> None:
    """A peft adapter folder of `sd`, naming its base by `base_ref` (a durable URL or hub id,
    not the node-local copy training read)."""
    if base_ref:
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = base_ref
    model.save_pretrained(out, state_dict=sd)


def _lora_part(name: str) -> tuple[str, str]:
    """'...q_proj.lora_A.default.weight' -> ('...q_proj', 'A'); base_layer -> weight/bias."""
    if ".lora_A." in name:
        return name.split(".lora_A.")[0], "A"
    if ".lora_B." in name:
        return name.split(".lora_B.")[0], "B"
    module, rest = name.split(".base_layer.")
    return module, rest


def load_export(out: Path):
    """The exported model for sample generations (plain folder, or base + adapter), built on
    this process alone (never under a live ZeRO-3 config: that would make it collective)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if not (out / "config.json").exists():  # an adapter export (no merged model)
        from peft import PeftModel

        cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
        base_dir = out / "base" if (out / "base").exists() else cfg["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        return PeftModel.from_pretrained(base, out / "adapter")
    return AutoModelForCausalLM.from_pretrained(out)


def fold_mup(model, cfg: JobConfig):
    """A plain GPT2LMHeadModel computing exactly what the muP model computes, so that any
    `from_pretrained` user gets the trained function without our forward hooks: the embedding
    multiplier goes into untied input embeddings, the logit multiplier into lm_head, and the
    1/head_dim attention scale into the query weights (standard attention divides by
    sqrt(head_dim), so queries are divided by sqrt(head_dim) once more)."""
    import math

    from transformers import GPT2LMHeadModel

    meta = model.config.mup
    config = type(model.config).from_dict({**model.config.to_dict(), "tie_word_embeddings": False})
    config.mup = None
    plain = GPT2LMHeadModel(config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    emb = meta["embeddings_scale"]
    state["lm_head.weight"] = state["transformer.wte.weight"] * meta["output_logits_scale"]
    state["transformer.wte.weight"] = state["transformer.wte.weight"] * emb
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"] * emb
    d = cfg.model.hidden_size
    q_scale = 1.0 / math.sqrt(d // cfg.model.num_heads)
    for i in range(cfg.model.num_layers):
        w, b = f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_attn.bias"
        state[w][:, :d] *= q_scale  # Conv1D weight is (in, 3 x out): queries first
        state[b][:d] *= q_scale
    plain.load_state_dict(state, strict=True)
    return plain


# Prompts of pretraining runs (data.format text): plain continuations.
TEXT_PROMPTS = ["def __init__(self", '"""Return the', "import os\n", "The value of"]

# Fixed prompts, so that runs of a recipe can be compared by what they say.
SAMPLE_PROMPTS = [
    "What is 12 plus 30?",
    "Spell the word 'garden' backwards.",
    "What is the capital of Kenya?",
    "How many minutes are in 3 hours?",
    "Give me three tips for staying healthy.",
]


@torch.no_grad()
def sample_generations(
    model, tokenizer_dir: Path, cfg: JobConfig, max_new_tokens: int = 48
) -> list[dict]:
    """Greedy completions of SAMPLE_PROMPTS in the job's chat template."""
    from transformers import AutoTokenizer

    from orchestrator.data.prompts import style

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if cfg.data.format == "text":
        return [
            {"prompt": p, "completion": _greedy(model, tok, tok.encode(p), max_new_tokens)}
            for p in TEXT_PROMPTS
        ]
    st = style(cfg.data.template)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    stop = [tok.eos_token_id, *st.stop_ids(tok)]
    model.eval()
    rows = []
    for prompt in SAMPLE_PROMPTS:
        ids = bos + tok.encode(st.prompt(prompt), add_special_tokens=False)
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        rows.append({"prompt": prompt, "completion": st.reply(text)})
    return rows


def _greedy(model, tok, ids: list[int], max_new_tokens: int) -> str:
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)

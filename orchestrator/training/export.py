"""Export a trained model as a Hugging Face folder that `from_pretrained` loads.

- full: `export/` is a plain model folder (+ tokenizer), safetensors sharded by layer.
- lora with `export.merge_lora`: the adapter is merged into the weights: a plain model folder.
- lora without merging, and adapter (LLaMA-Adapter cannot be merged): `export/adapter/` is a peft
  adapter folder and `export/base/` the frozen base it applies to (only for random-init bases;
  a pretrained base is named by its durable URL or id in the adapter's config).

`export_sharded` writes it layer by layer: the strategy gathers one tensor at a time
(`iter_full_tensors`, collective), rank 0 merges LoRA weights as their parts arrive and writes a
safetensors shard per layer, in the training dtype (bf16 on GPUs). No rank ever holds the whole
model (a ZeRO-3 export used to gather every parameter on every GPU; an FSDP one re-loaded the
base in fp32 on rank 0), and nothing is re-read from disk. Sample generations need the model
in memory: they are made only up to `SAMPLE_MAX_PARAMS` (on CPU here), and skipped above it,
saying so.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

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
        with (self.out / fname).open("wb") as f, side.open("rb") as src:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            shutil.copyfileobj(src, f, 16 << 20)
        side.unlink()
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
) -> None:
    """Consume the collective tensor stream (every rank must); rank 0 writes the folder.
    `model` is this rank's (wrapped or sharded) model, for its config and peft settings. A
    streamed tensor is only valid until the next one is requested (a ZeRO-3 gather is
    released then): what is kept longer is copied."""
    if rank != 0:
        for _ in tensors:
            pass
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    peft = getattr(model, "peft_config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if export_mode(cfg) == "adapter":
        sd = {name: t.clone() for name, t in tensors if t is not None}  # small: trained only
        if base_ref:
            for peft_cfg in model.peft_config.values():
                peft_cfg.base_model_name_or_path = base_ref
        model.save_pretrained(out / "adapter", state_dict=sd)
        if not cfg.model.pretrained:  # a random-init base (tests, from scratch): ship it
            build_model(cfg.model, base.config.vocab_size).save_pretrained(out / "base")
            _copy_tokenizer(tokenizer_dir, out / "base")
        return
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    writer = _ShardWriter(out, dtype)
    scale = (cfg.lora.alpha / cfg.lora.r) if peft and cfg.train.method == "lora" else 1.0
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors:
        name = name.removeprefix(_PEFT_PREFIX)
        if ".lora_A." in name or ".lora_B." in name or ".base_layer." in name:
            module, part = _lora_part(name)
            got = pending.setdefault(module, {})
            got[part] = t.clone()  # kept past this item: the stream may reuse its tensor
            if {"weight", "A", "B"} <= set(got):  # every part of this LoRA linear is here
                w = got.pop("weight").float() + scale * (
                    got.pop("B").float() @ got.pop("A").float()
                )
                writer.add(f"{module}.weight", w)
                if "bias" in got:
                    writer.add(f"{module}.bias", got.pop("bias"))
                if not got:
                    pending.pop(module)
            continue
        if tied and name == "lm_head.weight":
            continue
        writer.add(name, t)
    for module, got in pending.items():  # a bias that arrived after its weights
        for part, t in got.items():
            writer.add(f"{module}.{part}", t)
    writer.close()
    config = base.config
    config.torch_dtype = dtype
    config.save_pretrained(out)
    _copy_tokenizer(tokenizer_dir, out)


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
    if (out / "adapter").exists():
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
    stop = [tok.eos_token_id]
    if st.stop_text:
        stop_ids = tok.encode(st.stop_text, add_special_tokens=False)
        if len(stop_ids) == 1:  # a special token (Dolly's and OA's keys)
            stop.append(stop_ids[0])
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
        if st.stop_text:
            text = text.split(st.stop_text)[0]
        rows.append({"prompt": prompt, "completion": text.strip()})
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

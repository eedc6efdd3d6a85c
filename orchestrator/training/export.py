"""Export a trained model as a Hugging Face folder that `from_pretrained` loads.

- full: `export/` is a plain model folder (+ tokenizer).
- lora with `export.merge_lora`: the adapter is merged into the weights: a plain model folder.
- lora without merging, and adapter (LLaMA-Adapter cannot be merged): `export/adapter/` is a peft
  adapter folder and `export/base/` the frozen base it applies to (only for random-init bases;
  a pretrained base is named by its id in the adapter's config).
"""

from __future__ import annotations

import shutil
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

    from orchestrator.data.instruct import STOP_TEXT, generation_prompt
    from orchestrator.data.templates import TEMPLATES

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if cfg.data.format == "text":
        return [
            {"prompt": p, "completion": _greedy(model, tok, tok.encode(p), max_new_tokens)}
            for p in TEXT_PROMPTS
        ]
    name = cfg.data.template
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    stop = [tok.eos_token_id]
    if name in STOP_TEXT:
        stop_ids = tok.encode(STOP_TEXT[name], add_special_tokens=False)
        if len(stop_ids) == 1:  # a special token (Dolly's and OA's keys)
            stop.append(stop_ids[0])
    model.eval()
    rows = []
    for prompt in SAMPLE_PROMPTS:
        if name in TEMPLATES:
            template = TEMPLATES[name](tok)
            ids = (
                template.bos
                + template.header
                + template.rounds([("user", prompt), ("assistant", "")])[0][0].prompt
            )
        else:
            ids = bos + tok.encode(generation_prompt(name, prompt), add_special_tokens=False)
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        if name in STOP_TEXT:
            text = text.split(STOP_TEXT[name])[0]
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

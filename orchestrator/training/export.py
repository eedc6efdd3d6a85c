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
) -> Path:
    """Rebuild the model on CPU, load the gathered weights (strictly) and save it under `out`."""
    if out.exists():
        shutil.rmtree(out)
    model = apply_method(build_model(cfg.model, vocab_size), cfg)
    model.load_state_dict(state_dict, strict=True)
    method = cfg.train.method
    if method == "full" or (method == "lora" and cfg.export.merge_lora):
        if method == "lora":
            model = model.merge_and_unload()
        model.save_pretrained(out)
        _copy_tokenizer(tokenizer_dir, out)
        return out
    model.save_pretrained(out / "adapter")
    if not cfg.model.pretrained:  # the base is ours (random init): ship it with the adapter
        build_model(cfg.model, vocab_size).save_pretrained(out / "base")
        _copy_tokenizer(tokenizer_dir, out / "base")
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)

"""The 8-bit half on CPU, with bitsandbytes' real `Linear8bitLt` layers (they run forward and
backward on CPU): checkpoints hold only what is trained, the LoRA merge reads the base's
original weights (not the int8 codes), a resume on another base is refused, and the FSDP2
offload / ZeRO-3 choices that only a GPU run would otherwise reach."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from orchestrator.compose.load import compose

LORA = ["train.method=lora", "train.strategy=ddp", "lora.r=4", "lora.alpha=8"]


@pytest.fixture
def world_of_one(tmp_path):
    """A real gloo process group of one rank (what DDP and DCP need)."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "pg"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.fixture
def base_dir(tmp_path) -> Path:
    """A tiny Llama saved as a pretrained folder (fp32 safetensors), as a base is."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, tie_word_embeddings=False)  # fmt: skip
    out = tmp_path / "base"
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _cfg(base_dir: Path, *extra: str):
    return compose("alpaca_lora", "local", [f"model.pretrained={base_dir}", "model.load_8bit=true",
                                            "model.vocab_size=128", *LORA, *extra])  # fmt: skip


def _lora_8bit(cfg):
    from orchestrator.training.methods import apply_method
    from orchestrator.training.model import build_model

    model = apply_method(build_model(cfg.model, 128), cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking adapters: B is zero at init
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.2)
    return model


def test_the_local_8bit_base_is_bitsandbytes_int8(base_dir):
    import bitsandbytes as bnb

    model = _lora_8bit(_cfg(base_dir))
    q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q, bnb.nn.Linear8bitLt) and q.weight.dtype == torch.int8
    x = torch.randint(0, 128, (2, 10))
    loss = model(input_ids=x, labels=x).loss
    loss.backward()  # the int8 layers pass gradients back to the adapters
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_merged_8bit_export_equals_the_original_base_plus_adapter(base_dir, tmp_path):
    """The merged export is the original-precision base + B·A: its logits equal those of the
    fp32 base with the same adapter (peft, unmerged) to float rounding. The int8 training
    model's own gap to it (the quantisation error) is reported separately, and is larger."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from orchestrator.training.export import export_whole
    from orchestrator.training.methods import apply_method

    cfg = _cfg(base_dir)
    model = _lora_8bit(cfg)
    tok = tmp_path / "tok"
    tok.mkdir()
    out = tmp_path / "export"
    export_whole(model, cfg, tok, out, str(base_dir), mode="model")

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "export_note" not in config
    merged = AutoModelForCausalLM.from_pretrained(out)
    reference = apply_method(AutoModelForCausalLM.from_pretrained(base_dir), cfg)
    set_peft_model_state_dict(reference, get_peft_model_state_dict(model))
    x = torch.randint(0, 128, (3, 12))
    model.eval(), reference.eval(), merged.eval()  # no LoRA dropout
    with torch.no_grad():
        want = reference(input_ids=x).logits
        got = merged(input_ids=x).logits
        int8 = model(input_ids=x).logits
    merge_gap = (got - want).abs().max().item()
    int8_gap = (int8 - want).abs().max().item()
    print(f"merged vs fp32 base + adapter: {merge_gap:.2e}; 8-bit model vs it: {int8_gap:.2e}")
    assert merge_gap < 1e-4
    assert int8_gap > 10 * merge_gap  # what training in 8-bit costs, not baked into the export
    # the adapter alone is kept beside the merged model, naming the base
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                        out / "adapter").eval()  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=x).logits, want, atol=1e-5, rtol=1e-5)


def test_8bit_merge_without_the_original_dequantises_and_says_so(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from orchestrator.training.export import export_whole

    cfg = _cfg(base_dir)
    model = _lora_8bit(cfg)
    gone = tmp_path / "moved"
    base_dir.rename(gone)  # the original files are not where model.pretrained says
    tok = tmp_path / "tok"
    tok.mkdir()
    out = tmp_path / "export"
    export_whole(model, cfg, tok, out, None, mode="model")
    config = json.loads((out / "config.json").read_text())
    assert "dequantised" in config["export_note"] and "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(gone)
    q = "model.layers.0.self_attn.k_proj.weight"  # not a LoRA target: int8 -> dequantised
    w, w0 = merged.state_dict()[q], original.state_dict()[q]
    # within LLM.int8's row-wise rounding step (absmax / 127), never the raw codes
    step = w0.abs().amax(dim=1, keepdim=True) / 127
    assert ((w - w0).abs() <= step).all()


def test_8bit_lora_checkpoint_holds_the_adapters_only_and_loads_back(
    base_dir, tmp_path, world_of_one
):
    """DCP's get_state_dict fails on an 8-bit base (`Linear8bitLt` has no attribute `SCB`);
    the checkpoint holds the trained parameters and their optimizer state, and reads back
    into place."""
    from orchestrator.checkpoint.hashing import SaveTarget
    from orchestrator.training.strategies import DdpStrategy

    cfg = _cfg(base_dir)
    strategy = DdpStrategy(_lora_8bit(cfg), cfg)
    x = torch.randint(0, 128, (2, 8))
    strategy.model(input_ids=x, labels=x).loss.backward()
    strategy.step(1e-3, 1.0)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    target = SaveTarget(folder, 0)
    strategy.write_checkpoint(target)
    saved = {n: p.detach().clone() for n, p in strategy.model.module.named_parameters()
             if p.requires_grad}  # fmt: skip
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    weights = {k.removeprefix("model.") for k in keys if k.startswith("model.")}
    assert weights == set(saved)  # the adapters, nothing of the frozen int8 base
    assert all(".lora_" in k for k in keys if k.startswith("optim.state."))
    with torch.no_grad():
        for _n, p in strategy.model.module.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    strategy.read_checkpoint(folder)
    for n, p in strategy.model.module.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), saved[n], rtol=0, atol=0)
    assert strategy.optimizer.state  # the Adam moments came back too


@pytest.mark.parametrize(
    "state, now, problem",
    [
        ({"strategy": "deepspeed", "world_size": 4}, ["train.strategy=deepspeed"],
         "hardware.num_workers=4"),
        ({"strategy": "deepspeed", "world_size": 2}, ["train.strategy=fsdp"],
         "train.strategy='deepspeed'"),
        ({"strategy": "ddp", "holds": "trainable",
          "base": {"ref": "s3://b/old", "digest": "sha256:aaa"}}, [], "trained on the base"),
        ({"strategy": "ddp", "holds": "trainable"}, ["train.method=full"], "train.method"),
        ({"strategy": "ddp", "holds": "trainable",
          "base": {"ref": "x", "digest": "sha256:bbb"}}, [], None),
        ({"strategy": "fsdp", "holds": "all"}, ["train.strategy=ddp"], None),
    ],
)  # fmt: skip
def test_resume_problem(state, now, problem):
    from orchestrator.checkpoint.resume import resume_problem

    cfg = compose("vicuna", "local", ["train.method=lora", *now])
    holds = "all" if cfg.train.method == "full" else "trainable"
    got = resume_problem(state, cfg, cfg.hardware.num_workers, "sha256:bbb", holds)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got, got


def test_fsdp_offload_materialises_in_cpu_memory_and_pins_only_with_an_accelerator():
    from orchestrator.training.strategies import materialize_device, offload_pins_memory

    assert materialize_device("cuda", cpu_offload=True) == "cpu"
    assert materialize_device("cuda", cpu_offload=False) == "cuda"
    assert offload_pins_memory() == torch.cuda.is_available()


def test_zero3_partitioned_matrices_are_decayed(tmp_path, world_of_one, monkeypatch):
    """Under deepspeed.zero.Init a parameter's `.data` is an empty 1-D tensor: grouping by
    `.ndim` put every matrix in the no-decay group."""
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.training.strategies import _param_groups

    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = compose("dolly", "local", ["optim.weight_decay=0.1"])
    ds = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4))  # fmt: skip
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.ndim == 1 and tuple(q.ds_shape) == (32, 32)  # partitioned
    groups = _param_groups(model, cfg)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(q) in decayed
    norm = model.model.layers[0].input_layernorm.weight
    assert id(norm) not in decayed

"""muP (Cerebras-GPT variant): multipliers in the forward, per-group LR scales in the optimizer,
and an export that is a plain GPT-2 computing the same function."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.compose.load import compose
from orchestrator.training.export import fold_mup
from orchestrator.training.model import build_model
from orchestrator.training.strategies import _adamw, _set_lr


@pytest.fixture(scope="module")
def cfg():
    c = compose("cerebras_gpt", "local", ["variant=111m_mup"])
    assert c.model.mup_base_width == 256
    return c


def test_mup_variant_uses_the_base_lr_and_multipliers(cfg):
    assert cfg.optim.lr == 6.0e-3  # the muP base LR at every size
    model = build_model(cfg.model, 2048)
    head_dim = cfg.model.hidden_size // cfg.model.num_heads
    assert all(b.attn.scaling == pytest.approx(1 / head_dim) for b in model.transformer.h)
    assert model.config.mup["output_logits_scale"] == pytest.approx(256 / cfg.model.hidden_size)
    # hidden init std = 0.08 * sqrt(256 / width); output projections / sqrt(2 layers)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert float(w.detach().std()) == pytest.approx(
        0.08 * math.sqrt(256 / cfg.model.hidden_size), rel=0.1
    )
    p = model.transformer.h[0].mlp.c_proj.weight
    expected = 0.08 * math.sqrt(256 / cfg.model.hidden_size) / math.sqrt(2 * cfg.model.num_layers)
    assert float(p.detach().std()) == pytest.approx(expected, rel=0.1)


def test_hidden_matrices_get_the_width_lr_scale(cfg):
    model = build_model(cfg.model, 2048)
    opt = _adamw(model, cfg)
    _set_lr(opt, 1e-3)
    scale = 256 / cfg.model.hidden_size
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        hidden = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        assert g["lr"] == pytest.approx(1e-3 * scale if hidden else 1e-3), name
        assert g["weight_decay"] == (cfg.optim.weight_decay if p.ndim >= 2 else 0.0), name


def test_standard_parametrisation_has_one_lr():
    c = compose("cerebras_gpt", "local")
    opt = _adamw(build_model(c.model, 2048), c)
    _set_lr(opt, 2e-3)
    assert {g["lr"] for g in opt.param_groups} == {2e-3}


def test_folded_export_is_a_plain_gpt2_with_the_same_logits(cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_model(cfg.model, 2048)
    x = torch.randint(0, 2048, (2, 33))
    with torch.no_grad():
        want = model(input_ids=x).logits
        plain = fold_mup(model, cfg)
        plain.save_pretrained(tmp_path)
        got = AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # and the multipliers matter: the unfolded weights in a plain GPT-2 give other logits
    assert not torch.allclose(
        build_model(cfg.model.__class__(**{**cfg.model.__dict__, "mup_base_width": None}), 2048)(
            input_ids=x
        ).logits,
        want,
        atol=1e-2,
    )

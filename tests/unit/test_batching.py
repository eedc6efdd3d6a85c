"""Batching modes: every example once, same micro-batch count on every rank, token budgets, and
packing that changes nothing a model computes (per-example logits equal to running it alone)."""

import random

import pytest
import torch

from orchestrator.data.batching import (
    collate_micro_batch,
    default_budget,
    plan_step,
    resolve_mode,
)
from orchestrator.data.dataset import StepBatches
from orchestrator.data.templates import IGNORE_INDEX, Example


def examples(n, seed=0, vocab=300, lo=4, hi=120):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = int(min(hi, max(lo, rng.lognormvariate(3.4, 0.9))))
        ids = [rng.randrange(4, vocab) for _ in range(k)]
        cut = rng.randrange(1, k)
        out.append(Example(ids, [IGNORE_INDEX] * cut + ids[cut:]))
    return out


@pytest.mark.parametrize("mode", ["pad", "grouped", "packed"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_example_once_and_equal_micro_batch_counts(mode, world):
    for seed in range(20):
        lengths = [len(e.input_ids) for e in examples(24, seed)]
        plan = plan_step(
            lengths, mode=mode, world=world, micro_batch_size=4, tokens_per_micro_batch=480,
            pack_len=120,
        )  # fmt: skip
        assert len({len(r) for r in plan}) == 1  # same number of passes on every rank
        seen = sorted(i for rank in plan for mb in rank for row in mb.rows for i in row)
        assert seen == list(range(24))
        for rank in plan:
            for mb in rank:
                if mode == "pad":
                    assert len(mb.rows) <= 4
                elif len(mb.rows) > 1:  # a lone example may exceed the budget, never a batch
                    assert mb.slots(lengths) <= 480
                if mode == "packed":
                    assert all(sum(lengths[i] for i in row) <= 120 for row in mb.rows)


def test_pad_mode_is_the_original_split():
    lengths = list(range(10, 26))
    plan = plan_step(lengths, mode="pad", world=2, micro_batch_size=4,
                     tokens_per_micro_batch=1, pack_len=1)  # fmt: skip
    # rank r, accumulation round k: examples [(k * world + r) * micro, ... + micro)
    assert [[row[0] for row in mb.rows] for mb in plan[1]] == [[4, 5, 6, 7], [12, 13, 14, 15]]


def test_grouped_and_packed_pad_less_than_random_order():
    exs = examples(64, seed=3)
    eff = {}
    for mode in ("pad", "grouped", "packed"):
        b = StepBatches(exs, global_batch_size=64, micro_batch_size=4, world_size=1, rank=0,
                        seed=0, pad_id=0, mode=mode, pack_len=120)  # fmt: skip
        eff[mode] = sum(len(e.input_ids) for e in exs) / b.padded_tokens(0)
    assert eff["pad"] < eff["grouped"] < 1.0 and eff["packed"] > 0.95


def test_auto_mode_per_hardware():
    assert resolve_mode("auto", "cpu", "sdpa") == "grouped"
    assert resolve_mode("auto", "A100-80GB", "sdpa") == "grouped"
    assert resolve_mode("auto", "A100-80GB", "flash_attention_2") == "packed"
    assert resolve_mode("pad", "A100-80GB", "flash_attention_2") == "pad"
    # Token budget: what the pad mode would need at worst.
    assert default_budget(8, 512) == 4096 and default_budget(4, 2048) == 8192


def _tiny(arch):
    from orchestrator.config.schema import ModelConfig
    from orchestrator.training.model import build_model

    cfg = ModelConfig(arch=arch, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, vocab_size=300)  # fmt: skip
    return build_model(cfg, 300).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(arch, attn):
    model = _tiny(arch)
    model.config._attn_implementation = attn
    exs = examples(12, seed=1, hi=60)
    lengths = [len(e.input_ids) for e in exs]
    [[*mbs]] = plan_step(lengths, mode="packed", world=1, micro_batch_size=4,
                         tokens_per_micro_batch=240, pack_len=120)  # fmt: skip
    assert any(len(row) > 1 for mb in mbs for row in mb.rows)  # something is really packed
    with torch.no_grad():
        for mb in mbs:
            t = collate_micro_batch(mb, exs, pad_id=0, fallback=exs[0])
            assert "attention_mask" not in t
            # use_cache=False as in the training loop: with a KV cache transformers skips the
            # packed-sequence detection and the examples would attend to each other.
            logits = model(
                input_ids=t["input_ids"], position_ids=t["position_ids"], use_cache=False
            ).logits
            for k, row in enumerate(mb.rows):
                at = 0
                for i in row:
                    n = lengths[i]
                    alone = model(input_ids=torch.tensor([exs[i].input_ids])).logits[0]
                    torch.testing.assert_close(logits[k, at : at + n], alone, atol=2e-5, rtol=1e-4)
                    at += n


def test_every_mode_gives_the_same_loss_and_gradients():
    """What is learned does not depend on the batching mode: the token-mean loss and the
    gradients of a step are equal in pad, grouped and packed mode."""
    import torch.nn.functional as F

    exs = examples(16, seed=2, hi=60)
    n_targets = sum(1 for e in exs for label in e.labels[1:] if label != IGNORE_INDEX)
    results = {}
    for mode in ("pad", "grouped", "packed"):
        model = _tiny("llama")
        b = StepBatches(exs, global_batch_size=16, micro_batch_size=4, world_size=1, rank=0,
                        seed=0, pad_id=0, mode=mode, pack_len=60,
                        tokens_per_micro_batch=120)  # fmt: skip
        total = torch.zeros(())
        for mb in b.step(0)[0]:
            inputs = {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids") if k in mb}
            logits = model(**inputs, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                   mb["labels"][:, 1:].reshape(-1), reduction="sum")  # fmt: skip
            (loss / n_targets).backward()
            total += loss.detach()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[mode] = (total / n_targets, grads)
    for mode in ("grouped", "packed"):
        torch.testing.assert_close(results[mode][0], results["pad"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(results[mode][1], results["pad"][1], atol=1e-6, rtol=1e-4)


def test_length_grouped_steps_hold_like_lengths_and_every_example_once():
    exs = examples(400, seed=5)
    b = StepBatches(exs, global_batch_size=20, micro_batch_size=4, world_size=1, rank=0,
                    seed=0, pad_id=0, group_steps=10)  # fmt: skip
    steps = [b.global_examples(s) for s in range(b.steps_per_epoch)]
    assert sorted(id(e) for st in steps for e in st) == sorted(id(e) for e in exs)
    spread = [max(len(e.input_ids) for e in st) - min(len(e.input_ids) for e in st) for st in steps]
    plain = StepBatches(exs, global_batch_size=20, micro_batch_size=4, world_size=1, rank=0,
                        seed=0, pad_id=0)  # fmt: skip
    spread_plain = [
        max(len(e.input_ids) for e in st) - min(len(e.input_ids) for e in st)
        for st in (plain.global_examples(s) for s in range(plain.steps_per_epoch))
    ]
    assert sum(spread) < sum(spread_plain) / 3
    # Not longest-first: the step order within a megabatch is shuffled, and reproducible.
    assert max(len(e.input_ids) for e in steps[0]) < max(len(e.input_ids) for e in exs)
    again = StepBatches(exs, global_batch_size=20, micro_batch_size=4, world_size=1, rank=0,
                        seed=0, pad_id=0, group_steps=10)  # fmt: skip
    assert [id(e) for e in again.global_examples(7)] == [id(e) for e in steps[7]]

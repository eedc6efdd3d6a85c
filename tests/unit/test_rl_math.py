"""PPO's arithmetic against direct computations, the group batches' determinism, preference
data preparation (held-out split by key, reply-only labels) and the objectives' cost terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.data.templates import IGNORE_INDEX, Example
from orchestrator.rl import ppo
from orchestrator.rl.batches import GroupBatches, group_rows, prompt_ids


def test_gae_matches_the_recursion_on_one_reply():
    # prompt of 2 positions, reply of 3 tokens at positions 2..4, padding after
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.float)
    rewards = torch.tensor([[0.0, 0.0, 0.1, -0.2, 1.5, 0.0]])
    values = torch.tensor([[9.0, 9.0, 0.3, 0.5, 0.7, 9.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    r, v = [0.1, -0.2, 1.5], [0.3, 0.5, 0.7]
    want, last = [0.0] * 3, 0.0
    for t in reversed(range(3)):
        nv = v[t + 1] if t < 2 else 0.0
        last = r[t] + gamma * nv - v[t] + gamma * lam * last
        want[t] = last
    assert adv[0, 2:5].tolist() == pytest.approx(want, abs=1e-6)
    assert adv[0, [0, 1, 5]].abs().sum() == 0 and ret[0, 5] == 0
    assert ret[0, 2:5].tolist() == pytest.approx([a + b for a, b in zip(want, v, strict=True)])


def test_token_and_sequence_rewards():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float)
    kl = torch.tensor([[5.0, 1.0, 2.0, 7.0], [1.0, 1.0, 1.0, 1.0]])
    score = torch.tensor([3.0, -1.0])
    r = ppo.token_rewards(score, kl, mask, 0.1)
    assert r[0].tolist() == pytest.approx([0.0, -0.1, -0.2 + 3.0, 0.0])
    assert r[1].tolist() == pytest.approx([-0.1, -0.1, -0.1, -0.1 - 1.0])
    seq = ppo.sequence_reward(score, kl, mask, 0.1)
    assert seq.tolist() == pytest.approx([3.0 - 0.1 * 1.5, -1.0 - 0.1])


def test_clipped_losses():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    loss, clipfrac, _ = ppo.policy_loss(new, old, adv, mask, 0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2) and float(clipfrac) == 1.0
    v = ppo.value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]),
                       torch.ones(1), 0.4)  # fmt: skip
    assert float(v) == pytest.approx(0.5 * max((1 - 2) ** 2, (0.4 - 2) ** 2))


def test_whiten_has_zero_mean_unit_variance_on_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = ppo.whiten(x, mask)[0, :3]
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(w.std()) == pytest.approx(1.0, abs=1e-4)


def _examples(n_groups, k=2):
    out, ids = [], []
    for g in range(n_groups):
        for r in range(k):
            out.append(Example([1, 2, 3 + g, 10 + r], [IGNORE_INDEX] * 3 + [10 + r]))
            ids.append(g)
    return out, np.asarray(ids)


def test_group_batches_depend_only_on_seed_and_step():
    ex, ids = _examples(12)
    kw = dict(groups_per_step=4, micro_groups=1, world_size=2, seed=3, pad_id=0)
    a = [GroupBatches(ex, ids, rank=r, **kw) for r in (0, 1)]
    b = GroupBatches(ex, ids, rank=0, **kw)
    assert a[0].steps_per_epoch == 3
    for step in range(7):
        mine = a[0].rank_groups(step) + a[1].rank_groups(step)
        assert sorted(mine) == sorted(a[0].step_groups(step)) and len(set(mine)) == 4
        assert b.rank_groups(step) == a[0].rank_groups(step)
    epoch0 = [g for s in range(3) for g in a[0].step_groups(s)]
    assert sorted(epoch0) == list(range(12))  # every group once per epoch
    mbs, n = a[0].step(0)
    assert n == 4 and len(mbs) == 2 and mbs[0]["group_sizes"].tolist() == [2]
    assert prompt_ids(ex[0]) == [1, 2, 3]
    assert group_rows(np.asarray([5, 5, 7, 7, 7, 2])) == [[0, 1], [2, 3, 4], [5]]


def test_preference_prepared_splits_by_key_and_labels_only_the_reply(tmp_path):
    from orchestrator.config.schema import DataConfig
    from orchestrator.data.dataset import prepare_data
    from orchestrator.data.preference import held_out

    cfg = DataConfig(kind="preference", format="stack_exchange_paired",
                     source="data/samples/stack_exchange_paired_sample.jsonl",
                     template="stack_llama", tokenizer=None, max_seq_len=256,
                     eval_fraction=0.15)  # fmt: skip
    data = prepare_data(cfg, tmp_path / "p")
    assert data.groups is not None
    train_g = set(data.groups[data.train.rows()].tolist())
    eval_g = set(data.groups[data.eval.rows()].tolist())
    assert train_g and eval_g and not train_g & eval_g
    assert len(data.train) == 2 * len(train_g)  # pairs: consecutive, best first
    e = data.train[0]
    first = next(i for i, x in enumerate(e.labels) if x != IGNORE_INDEX)
    assert all(x == IGNORE_INDEX for x in e.labels[:first])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    prompt = tok.decode(e.input_ids[:first], skip_special_tokens=True)
    assert prompt.startswith("Question: ") and prompt.endswith("\n\nAnswer: "), prompt
    assert held_out("se:1", 0.0) is False and held_out("se:1", 1.0) is True


def test_objective_work_counts_pairs_references_and_generation():
    from orchestrator.compose.load import compose
    from orchestrator.cost.estimator import decode_s, device, model_shape, objective_work

    for stage, lo, hi in (("reward", 2.0, 2.0), ("ppo", 5.0, 40.0)):
        cfg = compose("stack_llama", "full", [f"stage={stage}"])
        w = objective_work(cfg, model_shape(cfg), device(cfg), 150.0)
        assert lo <= w.train_passes <= hi, (stage, w)
    ppo_cfg = compose("stack_llama", "full", ["stage=ppo"])
    w = objective_work(ppo_cfg, model_shape(ppo_cfg), device(ppo_cfg), 150.0)
    assert (
        decode_s(ppo_cfg, model_shape(ppo_cfg), device(ppo_cfg), w) > 0 and w.tokens > 1.0
    )  # generation is priced, replies lengthen passes
    dpo = compose("stack_llama_2", "full", ["stage=dpo"])
    wd = objective_work(dpo, model_shape(dpo), device(dpo), 300.0)
    assert wd.train_passes == pytest.approx(2 * 1.5)  # LoRA: reference forward = 1/2 pass


def test_a_bad_preference_row_names_its_line_or_is_skipped_and_counted(tmp_path):
    import json

    from orchestrator.config.schema import DataConfig
    from orchestrator.data.formats import DataError
    from orchestrator.data.preference import build_preference_prepared

    rows = [{"qid": i, "question": f"What is {i} plus {i}?", "response_j": f"{2 * i}.",
             "response_k": "No idea."} for i in range(12)]  # fmt: skip
    rows[5].pop("response_k")
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(kind="preference", format="stack_exchange_paired", source=str(src),
              template="stack_llama", tokenizer=None, max_seq_len=128, eval_fraction=0.2)  # fmt: skip
    with pytest.raises(DataError, match=r"pairs.jsonl.* line 6.*response_k"):
        build_preference_prepared(DataConfig(**kw), tmp_path / "a")
    m = build_preference_prepared(DataConfig(**kw, on_error="skip"), tmp_path / "b")
    assert m.skipped_rows == 1 and m.num_train + m.num_eval == 2 * 11


def test_the_dpo_reference_cache_is_keyed_by_content_and_checks_itself():
    """A cache file rewritten with the same size and mtime was used as-is (loss 9e8): now it is
    keyed by the reference's digest and the data, and carries its own SHA-256."""
    import json

    from orchestrator.rl.recipes import (
        read_reference_cache,
        reference_cache_key,
        write_reference_cache,
    )

    key = reference_cache_key("sha256:ref", "data-key", 3, "bf16")
    text = write_reference_cache(key, [-1.5, -2.0, -0.25])
    assert read_reference_cache(text, key, 3) == [-1.5, -2.0, -0.25]
    other = reference_cache_key("sha256:other-ref", "data-key", 3, "bf16")
    assert read_reference_cache(text, other, 3) is None  # another reference model
    assert (
        read_reference_cache(text, reference_cache_key("sha256:ref", "new-data", 3, "bf16"), 3)
        is None
    )
    tampered = json.loads(text)
    tampered["values"][1] = -9e8  # same length, same key
    assert read_reference_cache(json.dumps(tampered), key, 3) is None
    assert read_reference_cache("[-1.5, -2.0, -0.25]", key, 3) is None  # the old format
    nan = write_reference_cache(key, [-1.0, float("nan"), -1.0])
    assert read_reference_cache(nan, key, 3) is None

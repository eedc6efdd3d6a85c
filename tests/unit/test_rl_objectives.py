"""Preference objectives and KL controllers against their formulas, computed directly."""

import math

import pytest
import torch

from orchestrator.rl import kl
from orchestrator.rl.losses import (
    completion_logprobs,
    dpo_loss,
    pairwise_loss,
    rank_metrics,
    ranking_loss,
)


def _ls(x: float) -> float:  # log(sigmoid(x))
    return -math.log1p(math.exp(-x))


def test_pairwise_loss_is_the_mean_negative_log_sigmoid_of_the_margin():
    rc, rr = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    want = -sum(_ls(c - r) for c, r in zip(rc.tolist(), rr.tolist())) / 3
    assert float(pairwise_loss(rc, rr)) == pytest.approx(want, rel=1e-6)


def test_ranking_loss_is_openassistants_rm_loss():
    scores = torch.tensor([3.0, 1.0, -2.0, 0.5, 0.7])  # a group of 3, then a group of 2
    l2 = 0.001

    def group(s):
        terms = [-_ls(s[i] - s[j]) + l2 * 0.5 * (s[i] ** 2 + s[j] ** 2)
                 for i in range(len(s)) for j in range(i + 1, len(s))]  # fmt: skip
        return sum(terms) / len(terms)

    want = (group([3.0, 1.0, -2.0]) + group([0.5, 0.7])) / 2
    assert float(ranking_loss(scores, [3, 2], l2)) == pytest.approx(want, rel=1e-6)
    # K=2 without the L2 term is the pairwise loss
    assert float(ranking_loss(torch.tensor([2.0, 1.0]), [2], 0.0)) == pytest.approx(-_ls(1.0))
    with pytest.raises(ValueError, match="at least 2"):
        ranking_loss(torch.tensor([1.0]), [1])
    with pytest.raises(ValueError, match="sum to"):
        ranking_loss(scores, [3])


def test_rank_metrics_all_pairs_and_best_vs_worst():
    scores = torch.tensor([3.0, 4.0, -2.0, 0.5, 0.7])
    m = rank_metrics(scores, [3, 2])
    assert m.pair_accuracy == pytest.approx(2 / 4)  # (3>4 no, 3>-2, 4>-2, 0.5>0.7 no)
    assert m.best_vs_worst == pytest.approx(1 / 2)


def test_dpo_and_cdpo_match_the_formulas():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.5]), torch.tensor([-11.5, -3.5])
    beta, eps = 0.1, 0.2
    hs = [
        (a - c) - (b - d) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())
    ]
    want_dpo = sum(-_ls(beta * h) for h in hs) / 2
    want_cdpo = sum(-(1 - eps) * _ls(beta * h) - eps * _ls(-beta * h) for h in hs) / 2
    assert float(dpo_loss(pc, pr, rc, rr, beta).loss) == pytest.approx(want_dpo, rel=1e-6)
    out = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    assert float(out.loss) == pytest.approx(want_cdpo, rel=1e-6)
    assert out.reward_chosen.tolist() == pytest.approx([0.1, 0.05])
    assert out.accuracy == 0.5 and out.margin == pytest.approx((0.1 - -0.05 + 0.05 - 0.05) / 2)


def test_dpo_at_the_reference_is_log2_and_the_reference_gets_no_gradient():
    p = torch.tensor([-5.0, -7.0], requires_grad=True)
    ref = torch.tensor([-5.0, -7.0], requires_grad=True)
    out = dpo_loss(p[:1], p[1:], ref[:1], ref[1:], beta=0.1)
    assert float(out.loss) == pytest.approx(math.log(2))
    out.loss.backward()
    assert ref.grad is None and p.grad is not None
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(p[:1], p[1:], ref[:1], ref[1:], label_smoothing=0.5)


def test_completion_logprobs_sum_only_the_completion_tokens():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1]])  # tokens 2 and 3 (ids 3, 4) are the completion
    logp = torch.log_softmax(logits, -1)
    want = logp[0, 1, 3] + logp[0, 2, 4]
    assert float(completion_logprobs(logits, ids, mask)[0]) == pytest.approx(float(want))


def test_adaptive_kl_controller_is_ziegler_and_fixed_never_moves():
    c = kl.adaptive(init=0.2, target=6.0, horizon=10000)
    up = c.update(kl=12.0, n_steps=256)  # error clipped to +0.2
    assert up.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    down = c.update(kl=3.0, n_steps=256)  # error -0.5 clipped to -0.2
    assert down.value == pytest.approx(0.2 * (1 - 0.2 * 256 / 10000))
    same = c.update(kl=6.0, n_steps=256)
    assert same.value == pytest.approx(0.2)
    assert kl.fixed(0.1).update(kl=100.0, n_steps=10**6).value == 0.1


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert kl.k1(lp, ref).tolist() == pytest.approx([0.5, 0.0])
    assert kl.k3(lp, ref).tolist() == pytest.approx([math.exp(0.5) - 1 - 0.5, 0.0])

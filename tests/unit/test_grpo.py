"""GRPO (orchestrator/rl/grpo*.py, rewards.py, rollout.py): the maths as tables, the rewards on
untrusted text, and the trainer's weight-sync calls with a recording engine (no cluster)."""

from __future__ import annotations

import json
import socket
import types

import pytest
import torch

from orchestrator.objectives.grpo import SETTINGS as GRPO
from orchestrator.rl import grpo_loss
from orchestrator.rl.rewards import countdown, evaluate_equation, format_only, math_exact

TRUTH = json.dumps({"target": 24, "numbers": [3, 4, 2]})


@pytest.mark.parametrize(
    "completion, reward",
    [
        (" 3 * 4 = 12, 12 * 2 = 24 </think> <answer> (3 * 4) * 2 </answer>", 1.0),
        ("<answer> 3 * 4 * 2 </answer>", 1.0),
        ("<answer> 1 + 2 </answer> then <answer> 4 * 3 * 2 </answer>", 1.0),  # the last counts
        ("<answer> 3 * 4 + 2 </answer>", 0.1),  # well formed, wrong value
        ("<answer> 3 * 4 * 2 * 1 </answer>", 0.1),  # a number not given
        ("<answer> 3 * 8 </answer>", 0.1),  # numbers not used once each
        ("<answer> 3 * 4 * 2 = 24 </answer>", 0.1),  # `=` is not an expression
        ("<answer> __import__('os').system('x') </answer>", 0.1),  # never run: not arithmetic
        ("<answer> 3 ** 4 </answer>", 0.1),
        ("<answer> 24 / (3 - 3) </answer>", 0.1),  # a division by zero is wrong, not a crash
        ("the answer is 24", 0.0),  # no answer tag
    ],
)
def test_countdown_reward_as_tinyzero_scores_it(completion, reward):
    assert countdown(completion, TRUTH) == reward


def test_equations_are_parsed_never_evaluated_as_code():
    assert evaluate_equation("(1 + 2) / 3") == (1.0, [1, 2, 3])
    assert evaluate_equation("x + 1") is None and evaluate_equation("1" * 300) is None
    assert evaluate_equation("2.5 * 2") is None  # integers only, as the problems give


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        ("so <answer> 1,234 </answer>", "1234", 1.0),
        ("it is 42.0", "42", 1.0),  # no tag: the last number
        ("<answer>$7</answer>", "7", 1.0),
        ("<answer> 8 </answer>", "7", 0.0),
        ("no number", "7", 0.0),
    ],
)
def test_math_exact_match(completion, answer, reward):
    assert math_exact(completion, answer) == reward


def test_format_reward():
    assert format_only(" a </think> <answer> b </answer>", "") == 1.0
    assert format_only(" a <answer> b </answer>", "") == 0.0


def test_group_advantages_table():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1])
    adv = grpo_loss.group_advantages(r, 4, scale=True)
    assert adv[:4].sum().abs() < 1e-6 and adv[0] > 0 > adv[1]
    assert torch.allclose(adv[4:], torch.zeros(4))  # a group of equal rewards teaches nothing
    raw = grpo_loss.group_advantages(r, 4, scale=False)  # Dr. GRPO: no std division
    assert torch.allclose(raw[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_clip_higher_widens_only_the_upper_side():
    logp = torch.log(torch.tensor([[1.25, 0.7]]))
    old = torch.zeros(1, 2)
    up, down = torch.tensor([1.0]), torch.tensor([-1.0])
    _, c_sym, _ = grpo_loss.token_loss(logp, old, up, None, 0.2, 0.2, 0.0)
    _, c_hi, _ = grpo_loss.token_loss(logp, old, up, None, 0.2, 0.28, 0.0)
    assert c_sym.tolist() == [[1.0, 0.0]] and c_hi.tolist() == [[0.0, 0.0]]
    _, c_low, _ = grpo_loss.token_loss(logp, old, down, None, 0.2, 0.28, 0.0)
    assert c_low.tolist() == [[0.0, 1.0]]  # the lower clip is epsilon's in both


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    a = torch.log(torch.tensor([0.2, 0.5]))
    assert torch.allclose(grpo_loss.k3(a, a), torch.zeros(2))
    assert (grpo_loss.k3(a, a.flip(0)) > 0).all()


@pytest.mark.parametrize("loss", grpo_loss.LOSSES)
def test_the_step_loss_does_not_depend_on_micro_batching_or_ranks(loss):
    """Micro-batch parts over two "ranks" (summed, as DDP's mean x world does) add up to the
    loss computed over the whole step at once."""
    torch.manual_seed(0)
    per_tok = torch.randn(8, 6)
    mask = (torch.rand(8, 6) > 0.3).float()
    mask[:, 0] = 1.0
    denom = grpo_loss.normaliser(loss, 8, int(mask.sum()), 6)
    whole = grpo_loss.step_sum(per_tok, mask, loss) / denom
    cuts = [(i, min(i + 3, stop)) for start, stop in ((0, 4), (4, 8))
            for i in range(start, stop, 3)]  # micro-batches of 3 within each rank's 4  # fmt: skip
    parts = sum(grpo_loss.step_sum(per_tok[a:b], mask[a:b], loss) / denom for a, b in cuts)
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)
    if loss == "grpo":  # each completion's token mean, then the mean over completions
        want = ((per_tok * mask).sum(1) / mask.sum(1)).mean()
    elif loss == "dapo":
        want = (per_tok * mask).sum() / mask.sum()
    else:
        want = (per_tok * mask).sum() / (8 * 6)
    assert float(whole) == pytest.approx(float(want), rel=1e-6)


# ------------------------------------------------------------------ the trainer and its engine
class RecordingEngine:
    """A rollout engine that samples fixed completions and records every call with a digest
    of the policy's weights at that moment."""

    def __init__(self, policy, vocab: int, eos: int) -> None:
        self.policy, self.vocab, self.eos = policy, vocab, eos
        self.version = 0
        self.calls: list[tuple[str, float]] = []

    def _digest(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.policy.parameters()))

    def generate(self, prompts, sampling):
        self.calls.append(("generate", self._digest()))
        g = torch.Generator().manual_seed(len(self.calls))
        return [torch.randint(5, self.vocab, (3 + i % 3,), generator=g).tolist()
                for i in range(len(prompts) * sampling.n)]  # fmt: skip

    def sync_weights(self, policy) -> None:
        self.calls.append(("sync", self._digest()))
        self.version += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_engine_takes_the_weights_after_every_update(iterations):
    """After each optimizer step the engine gets the new weights, before it samples again."""
    import torch.distributed as dist

    from orchestrator.compose.load import compose
    from orchestrator.data.templates import Example
    from orchestrator.rl.batches import GroupBatches
    from orchestrator.rl.grpo import GrpoObjective
    from orchestrator.rl.rewards import reward_fn
    from orchestrator.training.model import build_model
    from orchestrator.training.strategies import build_strategy

    cfg = compose("tiny_zero", "local", [f"grpo.iterations={iterations}", "grpo.beta=0.04"])
    cfg.model.pretrained = None
    vocab = 64
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        # The trainer's parts an objective reads (training/objective.py), without a trainer.
        t = types.SimpleNamespace(cfg=cfg, world=1, rank=0, step=0, device=torch.device("cpu"))
        rec = GrpoObjective(t)
        policy = build_model(cfg.model, vocab)
        rec.reference = build_model(cfg.model, vocab).eval().requires_grad_(False)
        t.strategy = build_strategy(policy, cfg)
        t.model = t.strategy.model
        examples = [Example([1, 2, 3, 4], [-100, -100, 3, 4]) for _ in range(8)]

        class Data:
            pad_id = 0
            answers = [json.dumps({"target": 1, "numbers": [1]})] * 8

        t.data = Data()
        t.batches = GroupBatches(examples, torch.arange(8).numpy(), groups_per_step=4,
                                 micro_groups=1, world_size=1, rank=0, seed=0, pad_id=0)  # fmt: skip
        rec.reward_model, rec.eos_id = None, 2
        rec.verify = reward_fn("countdown")
        rec.tok = type("Tok", (), {"batch_decode": staticmethod(
            lambda rows, skip_special_tokens: ["<answer> 1 </answer>" if r[0] % 2 else "x"
                                               for r in rows])})()  # fmt: skip
        rec.engine = RecordingEngine(policy, vocab, 2)
        for step in range(2):
            t.step = step
            work = rec.step(1e-2)
            assert work.units == 4 * GRPO.of(cfg).group_size
        kinds = [k for k, _ in rec.engine.calls]
        assert kinds == (["generate"] + ["sync"] * iterations) * 2
        calls = rec.engine.calls
        for (_, a), (kb, b) in zip(calls, calls[1:], strict=False):
            if kb == "sync":
                assert a != b  # an update happened in between: the sync carries new weights
            else:
                assert a == b  # the next sample comes from the weights last synced
        assert rec.engine.version == 2 * iterations
    finally:
        dist.destroy_process_group()

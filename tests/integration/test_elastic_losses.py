"""An elastic run's training does not depend on its size: the same global batch on 3 gloo ranks
(the configured size) and on 2 (after losing a node: 18 examples do not split into 2 x
micro-batches of 2, so ranks take uneven shares, rows r::2, with empty passes to keep FSDP's
collectives in step) gives the same per-step losses and weights, through the trainer's own
data path (StepBatches, pad mode), forward/backward (the loss normalised by the global target
count) and FSDP2 optimizer step.

Tolerance: the two sizes add the same per-token terms in a different order (per-rank partial
sums, then an all-reduce over 2 or 3 ranks), so fp32 rounding differs at ~1e-7 relative per
sum; four AdamW steps at lr 1e-3 carry that into the weights, whose update is lr x a ratio of
moments, so the losses may differ by ~1e-6. 1e-5 absolute on losses of ~5 keeps a margin while
a wrong normalisation (the local instead of the global target count: ~30% off) or a missing
example (~1/18 of the loss) fails by orders of magnitude."""

from __future__ import annotations

import textwrap

import pytest

from tests.gloo import run_ranks

pytestmark = pytest.mark.integration

STEPS = 4

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    rank, world, init, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    from orchestrator.compose.load import compose
    from orchestrator.data.dataset import StepBatches
    from orchestrator.data.templates import Example
    from orchestrator.training.loop import forward_backward
    from orchestrator.training.model import build_model
    from orchestrator.training.strategies import FsdpStrategy

    cfg = compose("vicuna", "local", ["train.strategy=fsdp", "train.activation_checkpointing=false",
                                      "model.pretrained=null", "hardware.num_workers=3",
                                      "hardware.num_nodes=3", "hardware.nodes={min: 2, max: 3}",
                                      "fsdp.hsdp=false", "train.batching=pad",
                                      "train.micro_batch_size=2", "train.global_batch_size=18"])
    gen = torch.Generator().manual_seed(1)
    examples = []
    for i in range(72):  # lengths 6-24, prompt tokens masked as a chat template masks them
        n = 6 + int(torch.randint(0, 19, (1,), generator=gen))
        ids = torch.randint(3, 128, (n,), generator=gen).tolist()
        examples.append(Example(ids, [-100] * (n // 3) + ids[n // 3:]))
    batches = StepBatches(examples, global_batch_size=18, micro_batch_size=2, world_size=world,
                          rank=rank, seed=7, pad_id=0, mode="pad")
    torch.manual_seed(0)
    s = FsdpStrategy(build_model(cfg.model, 128), cfg)
    losses, passes = [], []
    for step in range(steps):
        mbs, n_targets = batches.step(step)
        passes.append(len(mbs))
        total = forward_backward(s.model, s, mbs, n_targets, world, torch.device("cpu"))
        s.step(1e-3, 1.0)
        dist.all_reduce(total)
        losses.append(float(total) / n_targets)
    weights = {n: p.full_tensor().double().sum().item() for n, p in s.model.named_parameters()}
    print("REPORT " + json.dumps({"losses": losses, "passes": passes, "weights": weights}))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def _run(tmp_path, world: int) -> list[dict]:
    return run_ranks(SCRIPT, world, [str(world), f"file://{tmp_path / f'pg{world}'}", str(STEPS)])


def test_shrunk_run_trains_like_the_full_size(tmp_path):
    full, shrunk = _run(tmp_path, 3), _run(tmp_path, 2)
    # 18 rows on 3 ranks: 3 micro-batches of 2 each; on 2 ranks: 9 rows each, 5 passes
    assert {tuple(r["passes"]) for r in full} == {(3,) * STEPS}
    assert {tuple(r["passes"]) for r in shrunk} == {(5,) * STEPS}
    a, b = full[0]["losses"], shrunk[0]["losses"]
    assert a[0] > 3.0 and a[-1] < a[0]  # it trains
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert y == pytest.approx(x, abs=1e-5), (step, a, b)
    for name, w in full[0]["weights"].items():
        assert shrunk[0]["weights"][name] == pytest.approx(w, rel=1e-4, abs=1e-4), name

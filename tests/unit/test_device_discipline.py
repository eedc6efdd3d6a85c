"""Device discipline, checked on CPU: a training step and an eval pass with the model and its
batches on the `meta` device and torch's fake process group (world 2). Any tensor the loop
creates on the CPU (labels left behind, an accumulator, a flag for a collective) meets a meta
tensor and raises, as it would meet a CUDA tensor on a GPU node and fail at step 1. It fails on
a loop that leaves labels or accumulators on the CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import contextlib, json, sys
    import torch, torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoModelForCausalLM, LlamaConfig

    from orchestrator.data.batching import collate
    from orchestrator.data.dataset import StepBatches
    from orchestrator.data.templates import Example
    from orchestrator.training.loop import forward_backward, loss_sum, to_device
    from orchestrator.training.sft import SftObjective

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    meta = torch.device("meta")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4)
    with meta:
        # eager attention: sdpa's mask shortcut reads the mask's values (not possible on meta)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")

    class OnDevice:  # the Strategy protocol for an unwrapped model (DDP/FSDP refuse meta)
        def autocast(self):
            return contextlib.nullcontext()
        def backward(self, loss, last_micro_batch):
            loss.backward()

    examples = [Example(list(range(1, 3 + i % 7)), [-100] + list(range(2, 3 + i % 7)))
                for i in range(16)]
    batches = StepBatches(examples, global_batch_size=8, micro_batch_size=2, world_size=2,
                          rank=0, seed=0, pad_id=0, mode=sys.argv[1])
    mbs, n_targets = batches.step(0)  # built on the CPU, as the data path does
    assert all(t.device.type == "cpu" for mb in mbs for t in mb.values())
    total = forward_backward(model, OnDevice(), mbs, n_targets, 2, meta)
    assert total.device == meta, total.device
    assert all(p.grad is not None and p.grad.device == meta for p in model.parameters())

    # eval: the SFT objective's own method, on the meta model, through the trainer's view
    import types
    class Data: eval, pad_id = examples[:5], 0
    class Train: micro_batch_size = 2
    class Cfg: train = Train()
    trainer = types.SimpleNamespace(model=model, strategy=OnDevice(), device=meta, world=2,
                                    rank=0, data=Data(), cfg=Cfg())
    r = SftObjective(trainer)
    try:
        r.evaluate()
    except RuntimeError as e:  # .item() of the meta total: everything before it ran on meta
        assert "meta" in str(e) and "item" in str(e), e

    # the check has teeth: labels left on the CPU meet meta logits and raise
    mb = to_device(collate(examples[:2], 0), meta)
    mb["labels"] = collate(examples[:2], 0)["labels"]
    try:
        loss_sum(model, mb)
        print(json.dumps({"teeth": False}))
    except (RuntimeError, NotImplementedError):
        print(json.dumps({"teeth": True}))
    """
)


def _run(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout.strip().splitlines()[-1]


def test_step_and_eval_run_on_the_device():
    # Padded (and grouped) micro-batches. Packed ones cannot run on meta at all: transformers
    # reads the position ids' values to find the packed sequences (`.item()` on meta raises).
    assert _run("pad") == '{"teeth": true}'
    assert _run("grouped") == '{"teeth": true}'

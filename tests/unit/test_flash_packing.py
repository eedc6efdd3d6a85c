"""Packed micro-batches under flash attention: transformers treats position ids as packed
sequences only for a single row, so packed rows (several per micro-batch) ran plain causal
attention across the examples of each row. The loop now flattens a packed micro-batch into one
row and passes the boundaries (`cu_seq_lens_*`, `max_length_*`). Checked on CPU through
transformers' real flash-attention dispatch, with the `flash_attn` entry points replaced by a
pure-torch reference (tests/assets/reference_flash_attn.py): each example's logits from the
packed micro-batch equal the example run alone. tests/gpu repeats it with the real kernels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"

SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys, tempfile
    from pathlib import Path
    import torch
    # a `flash_attn` package on sys.path whose entry points are the pure-torch reference
    root = Path(tempfile.mkdtemp()) / "flash_attn"
    root.mkdir()
    shutil.copy(sys.argv[1], root / "__init__.py")
    (root / "bert_padding.py").write_text(
        "from transformers.modeling_flash_attention_utils import _pad_input as pad_input, "
        "_unpad_input as unpad_input\\n")
    sys.path.insert(0, str(root.parent))
    import transformers.modeling_flash_attention_utils as fau
    fau.is_flash_attn_2_available = lambda: True  # the package above stands in for flash-attn

    from transformers import AutoModelForCausalLM, LlamaConfig
    from orchestrator.data.batching import MicroBatch, collate_micro_batch
    from orchestrator.data.templates import Example
    from orchestrator.training.loop import loss_sum

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    lengths = [9, 5, 12, 3, 7]
    ex = [Example(torch.randint(1, 97, (n,)).tolist(), [-100] + list(range(2, n + 1)))
          for n in lengths]
    alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in ex]
    mb = MicroBatch([[0, 1], [2, 3, 4]], packed=True)  # two packed rows

    model.config._attn_implementation = "flash_attention_2"
    def per_example(batch, rows):
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"},
                           use_cache=False).logits
        out, k = {}, 0
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                row_logits = logits[0] if logits.shape[0] == 1 else logits[r]
                start = k if logits.shape[0] == 1 else at
                out[i] = row_logits[start : start + n]
                k += n
                at += n
        return out

    flat = collate_micro_batch(mb, ex, 0, ex[0], flatten=True)
    rows = collate_micro_batch(mb, ex, 0, ex[0], flatten=False)
    got_flat, got_rows = per_example(flat, mb.rows), per_example(rows, mb.rows)
    diff = lambda got: max(float((got[i] - alone[i]).abs().max()) for i in range(len(ex)))
    # the flattened batch trains the same targets as the padded one would
    pad = collate_micro_batch(MicroBatch([[i] for i in range(5)], False), ex, 0, ex[0])
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        ls_pad = float(loss_sum(model, pad))
    model.config._attn_implementation = "flash_attention_2"
    with torch.no_grad():
        ls_flat = float(loss_sum(model, flat))
    print("REPORT " + json.dumps({"flat": diff(got_flat), "rows": diff(got_rows),
                                   "loss_pad": ls_pad, "loss_flat": ls_flat,
                                   "flat_rows": flat["input_ids"].shape[0]}))
    """
)


def test_packed_flash_attention_never_attends_across_examples():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ASSETS / "reference_flash_attn.py")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("REPORT "))[7:])
    assert r["flat_rows"] == 1
    assert r["flat"] < 1e-4, r  # every example as if alone
    assert r["rows"] > 1e-2, r  # the old layout: examples of a row attended to each other
    assert abs(r["loss_flat"] - r["loss_pad"]) < 1e-3 * abs(r["loss_pad"]), r

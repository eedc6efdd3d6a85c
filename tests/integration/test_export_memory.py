"""The export gathers one tensor at a time: a ZeRO-3 model of >= 300 MB on 2 gloo ranks is
written as per-layer safetensors shards while rank 0's memory grows by about one layer, not by
the model (the old export gathered every parameter on every rank at once). The files hold
exactly the engine's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import psutil, torch, torch.distributed as dist
    rank, out, init = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, LlamaConfig
    from orchestrator.compose.load import compose
    from orchestrator.training.export import export_sharded
    from orchestrator.training.strategies import build_strategy

    cfg = compose("vicuna", "local", ["train.strategy=deepspeed", "deepspeed.zero_stage=3",
                                      "train.activation_checkpointing=false", "model.pretrained=null",
                                      "export.enabled=true"])
    hf = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048,
                     num_hidden_layers=8, num_attention_heads=12)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf)
    ref = {k: v.clone() for k, v in model.state_dict().items()} if rank == 0 else None
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    strategy = build_strategy(model, cfg)
    del model
    import gc; gc.collect()
    rss = lambda: psutil.Process().memory_info().rss
    base, peak, done = rss(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss()); done.wait(0.002)
    t = threading.Thread(target=sample); t.start()
    export_sharded(strategy.iter_full_tensors(), strategy.engine.module, cfg,
                   __import__("pathlib").Path(sys.argv[4]), __import__("pathlib").Path(out), rank)
    done.set(); t.join()
    report = {"rank": rank, "increase": max(peak[0], rss()) - base, "model_bytes": n_bytes}
    if rank == 0:
        from safetensors.torch import load_file
        index = json.loads(open(f"{out}/model.safetensors.index.json").read())
        files = sorted(set(index["weight_map"].values()))
        got = {}
        for f in files:
            got.update(load_file(f"{out}/{f}"))
        report["files"] = len(files)
        report["equal"] = all(torch.equal(got[k], ref[k]) for k in got) and sorted(got) == sorted(
            k for k in ref if not k.endswith("inv_freq"))
        layer_bytes = max(sum(v.numel() * 4 for k, v in ref.items() if f".layers.{i}." in k)
                          for i in range(8))
        report["layer_bytes"] = layer_bytes
        report["largest_tensor"] = max(v.numel() * 4 for v in ref.values())
    print("REPORT " + json.dumps(report), flush=True)
    dist.barrier()
    import os; os._exit(0)  # skip interpreter teardown: DeepSpeed/gloo threads may abort it
    """
)


def test_zero3_export_writes_layer_by_layer(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    init = f"file://{tmp_path / 'pg'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(r), str(tmp_path / "export"), init, str(tok)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # what Ray Train sets on every worker (DeepSpeed checks LOCAL_RANK)
            env={
                **os.environ,
                "LOCAL_RANK": str(r),
                "RANK": str(r),
                "WORLD_SIZE": "2",
                # RSS = live memory: big blocks through mmap (returned on free), one arena
                "MALLOC_MMAP_THRESHOLD_": "65536",
                "MALLOC_ARENA_MAX": "2",
            },  # fmt: skip
        )
        for r in range(2)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        reports.append(json.loads(next(x for x in out.splitlines() if x.startswith("REPORT "))[7:]))
    r0 = min(reports, key=lambda r: r["rank"])
    assert r0["model_bytes"] >= 300e6
    assert r0["equal"] and r0["files"] >= 9, r0  # one shard per layer, + embeddings and head
    # rank 0 held about one tensor at a time (the embedding is the largest), never the model
    # (measured: +96 MB for this 325 MB model; the gather-everything export held all of it)
    assert r0["increase"] < 2 * r0["largest_tensor"] + 2 * r0["layer_bytes"], r0
    assert r0["increase"] < 0.5 * r0["model_bytes"], r0

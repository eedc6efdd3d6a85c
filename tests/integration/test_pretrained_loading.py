"""Pretrained weights loaded the way large models are: every rank builds the model on the meta
device, rank 0 alone reads the base from disk, and each rank receives its part by broadcast
(FSDP: only its shards). On 2 gloo ranks with a >= 300 MB Hugging Face folder: the gathered
weights equal the saved ones, rank 1 never opens the weight files, and rank 1's memory grows by
well under the model's size (it used to load the whole model in fp32 on every rank)."""

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
    import json, sys
    import psutil, torch, torch.distributed as dist
    rank, strategy, folder, init = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    import safetensors, safetensors.torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from orchestrator.compose.load import compose
    from orchestrator.training.methods import apply_method
    from orchestrator.training.model import build_meta_model, pretrained_state_dict
    from orchestrator.training.strategies import build_strategy

    cfg = compose("vicuna", "local", [f"train.strategy={strategy}", f"model.pretrained={folder}",
                                      "train.activation_checkpointing=false"])
    build_meta_model(cfg.model)  # imports the model code: the baseline is after it
    rss = lambda: psutil.Process().memory_info().rss
    base_rss, peak = rss(), [0]
    import threading
    done = threading.Event()
    def sample():  # the peak during the load, sampled (ru_maxrss holds the import-time peak)
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    if rank != 0:  # rank 1 must never read the weights
        def refuse(*a, **k):
            raise AssertionError("rank 1 opened the weight files")
        safetensors.safe_open = refuse
        safetensors.torch.load_file = refuse
        safetensors.torch.safe_open = refuse
    wrap = lambda m: apply_method(m, cfg)
    with torch.device("meta"):
        model = wrap(build_meta_model(cfg.model))
    strategy = build_strategy(model, cfg)
    state = pretrained_state_dict(cfg.model, None, wrap) if rank == 0 else None
    strategy.load_full_state_dict(state)
    del state
    done.set()
    sampler.join()
    peak_rss = max(peak[0], rss())
    full = get_model_state_dict(
        strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    report = {"rank": rank, "rss_increase": peak_rss - base_rss}
    if rank == 0:
        saved = safetensors.torch.load_file(f"{folder}/model.safetensors")
        report["keys_equal"] = sorted(saved) == sorted(k for k in full if k in saved)
        report["max_diff"] = max(float((full[k].float() - saved[k].float()).abs().max()) for k in saved)
        report["buffers_ok"] = bool(torch.allclose(
            {k.removeprefix("module."): v for k, v in strategy.model.named_buffers()}["model.rotary_emb.inv_freq"].float().cpu(),
            1.0 / (10000 ** (torch.arange(0, 64, 2).float() / 64)), rtol=1e-5))
    print("REPORT " + json.dumps(report), flush=True)
    dist.barrier()
    # torn down before exit: a gloo group left to the interpreter's exit can abort the process
    # ("terminate called without an active exception", SIGABRT; seen in CI even after this
    # teardown: a gloo thread still joinable when C++ destructors run), so the process leaves
    # without running them; its report is out already
    dist.destroy_process_group()
    sys.stdout.flush()
    import os
    os._exit(0)
    """
)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A Llama base of ~81M parameters (325 MB in fp32), saved as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("base") / "llama-81m"
    cfg = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048,
                      num_hidden_layers=8, num_attention_heads=12, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    return folder, n * 4


# RSS measures live memory only if freed blocks go back to the OS: large allocations through
# mmap (a fixed threshold: glibc otherwise raises it after the first big free and keeps later
# tensors in a heap that never shrinks), and one malloc arena.
RSS_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}


def _run(strategy: str, folder, tmp_path) -> list[dict]:
    init = f"file://{tmp_path / f'pg-{strategy}'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(r), strategy, str(folder), init],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=RSS_ENV,
        )
        for r in range(2)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        reports.append(json.loads(next(x for x in out.splitlines() if x.startswith("REPORT "))[7:]))
    return sorted(reports, key=lambda r: r["rank"])


def test_fsdp_reads_the_base_once_and_ranks_hold_only_their_shards(base_folder, tmp_path):
    folder, fp32_bytes = base_folder
    assert fp32_bytes >= 300e6
    r0, r1 = _run("fsdp", folder, tmp_path)
    assert r0["keys_equal"] and r0["max_diff"] == 0.0 and r0["buffers_ok"], r0
    # Rank 1 holds its half (its FSDP shard) plus one tensor in flight, never the model: 215 MB
    # of 325 measured here; reading the base on every rank costs the model + the shard.
    assert r1["rss_increase"] < 0.8 * fp32_bytes, (r1["rss_increase"], fp32_bytes)


def test_ddp_gets_the_same_weights_by_broadcast(base_folder, tmp_path):
    folder, _ = base_folder
    r0, _ = _run("ddp", folder, tmp_path)
    assert r0["keys_equal"] and r0["max_diff"] == 0.0 and r0["buffers_ok"], r0

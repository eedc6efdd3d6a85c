import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost import steptime
from orchestrator.cost.estimator import cluster_price_per_hour, project
from orchestrator.cost.steptime import ModelShape, Pass, Regime
from orchestrator.training.model import count_params


def test_llama_13b_param_count_from_config():
    cfg = compose("vicuna", "full")
    assert count_params(cfg.model) == pytest.approx(13.016e9, rel=1e-3)


def test_flops_per_token_match_torch_flop_counter():
    """The model FLOPs of a pass equal what torch.utils.flop_counter counts when a tiny Llama
    runs forward and backward (matmuls only; attention as llm-foundry counts it: QK^T and AV
    in full, x3 for the backward), to within the embedding/head bookkeeping."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=176,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)  # fmt: skip
    model = LlamaForCausalLM(hf)
    model.config._attn_implementation = "eager"  # counted matmuls, as the formula assumes
    b, s = 2, 32
    ids = torch.randint(0, 256, (b, s))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counted = counter.get_total_flops()
    # parameters that multiply activations (the input embedding is a lookup, not a matmul)
    n = sum(p.numel() for name, p in model.named_parameters()
            if "embed_tokens" not in name and "norm" not in name)  # fmt: skip
    shape = ModelShape(n, n, 2, 64)
    p = Pass(slots=b * s, attn_sq=float(b * s * s), real=b * s, real_sq=float(b * s * s))
    dense, attn, model_flops = steptime.pass_flops(shape, Regime(method="full"), p)
    assert dense + attn == pytest.approx(model_flops)  # full fine-tune, no padding, no recompute
    assert model_flops == pytest.approx(counted, rel=0.02), (model_flops, counted)


def test_frozen_base_skips_weight_gradients_and_recompute_adds_a_forward():
    shape = ModelShape(1000, 10, 2, 64)
    p = Pass(slots=100, attn_sq=0.0, real=100, real_sq=0.0)
    full = steptime.pass_flops(ModelShape(1000, 1000, 2, 64), Regime("full"), p)[0]
    lora = steptime.pass_flops(shape, Regime("lora"), p)[0]
    rec = steptime.pass_flops(ModelShape(1000, 1000, 2, 64), Regime("full", recompute=True), p)[0]
    assert full == 6 * 1000 * 100 and lora == pytest.approx((4 + 2 * 0.01) * 1000 * 100)
    assert rec == 8 * 1000 * 100


def test_kernel_fit_reproduces_the_catalog_and_holds_out_of_sample():
    """Leave-one-out over the benchmark rows: median within 15%, every row within 30%, with
    three free constants; the catalog holds the fit."""
    import numpy as np

    from orchestrator.cost.calibration import benchmark_rows, fit_kernel, leave_one_out

    rows = benchmark_rows()
    assert len(rows) >= 100
    e, t_half, d_half = fit_kernel(rows)
    k = compose("vicuna", "full").cost.kernel
    assert (k.e_max, k.t_half, k.d_half) == pytest.approx((e, t_half, d_half), rel=1e-3)
    errors = np.abs(leave_one_out(rows))
    assert np.median(errors) < 0.15 and errors.max() < 0.30, (np.median(errors), errors.max())


def test_efficiency_grows_with_pass_size_and_width_and_h100_is_relatively_lower():
    k = compose("vicuna", "full").cost.kernel
    values = [steptime.efficiency(k, "A100-80GB", t, 4096) for t in (64, 512, 4096, 65536)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)) and values[-1] < k.e_max
    assert steptime.efficiency(k, "A100-80GB", 4096, 768) < steptime.efficiency(
        k, "A100-80GB", 4096, 5120
    )
    assert steptime.efficiency(k, "H100-80GB", 4096, 4096) < values[2]


def _slots(cfg, mode):
    from orchestrator.cost.lengths import job_lengths, passes

    lengths = list(job_lengths(cfg).values)[: cfg.train.global_batch_size]
    ranks = passes(lengths, mode=mode, world=2, micro_batch_size=4,
                   tokens_per_micro_batch=None, max_seq_len=cfg.data.max_seq_len,
                   varlen=mode == "packed")  # fmt: skip
    return sum(p.slots for r in ranks for p in r), sum(p.real for r in ranks for p in r), lengths


def test_slot_counts_are_the_batch_planners_on_the_shipped_sample():
    """Slots per mode equal the planner's own micro-batches on the vicuna sample, and
    packed <= grouped <= padded <= padded to the maximum."""
    from orchestrator.data.batching import default_budget, plan_step

    cfg = compose("vicuna", "local")
    got = {m: _slots(cfg, m) for m in ("packed", "grouped", "pad", "pad_to_max")}
    lengths = got["pad"][2]
    plans = plan_step(lengths, mode="grouped", world=2, micro_batch_size=4,
                      tokens_per_micro_batch=default_budget(4, max(lengths)),
                      pack_len=max(lengths))  # fmt: skip
    assert got["grouped"][0] == sum(m.slots(lengths) for r in plans for m in r)
    assert got["packed"][0] == got["packed"][1] == sum(lengths)  # varlen packing: no padding
    slots = [got[m][0] for m in ("packed", "grouped", "pad", "pad_to_max")]
    assert slots == sorted(slots), slots
    assert got["pad_to_max"][0] == len(lengths) * cfg.data.max_seq_len


def test_monotone_projections():
    base = project(compose("vicuna", "full"))
    lora = project(compose("vicuna", "full", ["train.method=lora"]))
    assert lora.executed_flops < base.executed_flops and lora.usd < base.usd
    # more GPUs never cost fewer GPU-hours than linear scaling
    two = project(compose("vicuna", "full", ["hardware.num_nodes=2", "hardware.num_workers=16",
                                             "train.global_batch_size=64"]))  # fmt: skip
    assert two.compute_hours * 16 >= 0.999 * base.compute_hours * 8 * (two.slots / base.slots)
    # the original's padding processes more slots than our packing
    replay = project(compose("vicuna", "full"), replay=True)
    assert replay.slots > base.slots and replay.tokens == pytest.approx(base.tokens)


def test_projection_arithmetic_and_overheads():
    cfg = compose("vicuna", "full")
    p = project(cfg)
    price = cfg.cost.instances["p4de.24xlarge"]
    od_hours = p.assumptions["hours_on_demand"]
    assert od_hours == pytest.approx(p.compute_hours + sum(
        v for k, v in p.overhead_hours.items() if k != "preemptions"))  # fmt: skip
    assert p.compute_hours == pytest.approx(p.assumptions["step_s"] * p.assumptions["steps"] / 3600)
    extra = sum(p.usd_extra.values())
    assert set(p.usd_extra) >= {"head_node", "idle_until_scale_down", "storage", "volumes"}
    assert p.usd_extra["head_node"] > 0 and p.usd_extra["storage"] > 0
    assert p.usd_on_demand == pytest.approx(od_hours * price.on_demand_per_hour_usd + extra)
    assert p.hours > od_hours  # spot: expected preemptions cost extra hours ...
    assert p.usd_spot == pytest.approx(p.hours * price.spot_per_hour_usd + extra)
    assert p.usd == p.usd_spot and p.usd_spot_low < p.usd_spot < p.usd_spot_high
    assert 0 < p.mfu < p.hfu < 1  # recomputation: executed FLOPs exceed the model's


def test_replay_checks_a_published_time_instead_of_fitting_it():
    p = project(compose("vicuna", "full"), replay=True)
    pub = p.assumptions["published"]
    assert pub["hours"] == 24.0 and pub["implied_hfu"] == pytest.approx(p.hfu * p.hours / 24.0)
    assert pub["consistent"] == (pub["implied_hfu"] <= pub["best_kernel_hfu"])


def test_decode_is_memory_bound_at_small_batches():
    cfg = compose("vicuna", "full")
    from orchestrator.cost.estimator import device, model_shape

    shape, dev = model_shape(cfg), device(cfg)
    one = steptime.decode_step_s(shape, dev, batch=1, context=512)
    assert one == pytest.approx(shape.n_params * 2 / dev.memory_bytes_per_s, rel=0.05)
    big = steptime.decode_step_s(shape, dev, batch=256, context=512)
    assert big / 256 < one / 10  # batching amortises the weight reads


def test_print_projected_bills_of_all_jobs(capsys):
    from orchestrator.compose.load import job_configs
    from orchestrator.paths import JOBS_DIR

    for job in sorted(JOBS_DIR.glob("*.yaml")):
        for stage, cfg in job_configs(str(job), "full").items():
            p = project(cfg)
            print(f"{job.stem} {stage}: {p.summary()}")
            assert p.usd > 0 and p.hours > 0
    assert "vicuna" in capsys.readouterr().out


def test_local_cluster_has_a_price():
    cfg = compose("vicuna")
    assert (
        cluster_price_per_hour(cfg) == cfg.cost.instances["local-2vcpu"].on_demand_per_hour_usd > 0
    )


def test_full_scale_without_gpus_fails_fast_with_the_bill(monkeypatch, tmp_path):
    import ray

    from orchestrator.launch.run import launch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"needs 8 x A100-80GB.*this machine has 0 GPUs.*Projected bill.*\$"
    ):
        launch("vicuna", "full")
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def test_bad_data_fails_before_any_cluster(monkeypatch, tmp_path):
    import ray

    from orchestrator.data.formats import DataError
    from orchestrator.launch.run import launch

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n'
        '{"id": "b", "conversations": "oops"}\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match=r"bad.jsonl line 2 \(id=b\): field 'conversations' must be a list"
    ):
        launch("vicuna", "local", [f"data.source={bad}"])
    assert not ray.is_initialized()


def test_projection_over_the_cap_needs_a_yes(monkeypatch, tmp_path):
    import ray

    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", None)  # nobody to ask
    free_start = ["budget.teardown_s=0", "cost.instances.local-2vcpu.startup_s=0"]
    with pytest.raises(ConfigError, match=r"exceeds budget.max_usd=\$1e-06.*--yes"):
        launch("vicuna", "local", ["budget.max_usd=0.000001", *free_start])
    # a cap that cannot even pay the start-up and tear-down: refused, --yes or not
    with pytest.raises(ConfigError, match=r"starting costs \$0.0005 \(start-up\) \+ \$0.0006"):
        launch("vicuna", "local", ["budget.max_usd=0.0004", "budget.teardown_s=20"], yes=True)
    assert not ray.is_initialized()


def test_checkpoint_bytes_one_figure_per_strategy():
    from orchestrator.cost.memory import checkpoint_bytes

    def numbers(cfg, p, t):  # what the formula adds per parameter, overheads aside
        return checkpoint_bytes(cfg, p, t) - checkpoint_bytes(cfg, 0, 0)

    fsdp = compose("vicuna", "full")
    assert numbers(fsdp, 10, 10) == 120  # fp32 weights + Adam (m, v)
    lora = compose("vicuna", "full", ["train.method=lora"])
    assert numbers(lora, 10, 1) == 12  # only the trained part: its weights and moments
    ds = compose("vicuna", "full", ["train.strategy=deepspeed", "train.precision=bf16",
                                    "deepspeed.zero_stage=2"])  # fmt: skip
    assert numbers(ds, 10, 10) == 140  # bf16 module + fp32 master and moments
    ds3 = compose("vicuna", "full", ["train.strategy=deepspeed", "deepspeed.zero_stage=3"])
    assert numbers(ds3, 10, 10) == 120  # ZeRO-3: the module lives in the optimizer's partitions
    # a 7B LoRA checkpoint is megabytes, not the 27 GB of its base
    from orchestrator.cost.memory import checkpoint_counts, trainable_params

    a = compose("alpaca_lora", "full")
    p, t = trainable_params(a)
    assert checkpoint_bytes(a, p, t, *checkpoint_counts(a)) < 100e6 < 4 * p


def test_save_times_async_blocks_only_for_the_copy_and_measured_wins():
    from orchestrator.cost.estimator import SaveTimes, measured_save_times, save_times

    n = 13_000_000_000
    sync = save_times(compose("vicuna", "full", ["checkpoint.async_save=false"]), n, n)
    asyn = save_times(compose("vicuna", "full", ["checkpoint.async_save=true"]), n, n)
    assert sync.blocked_s == sync.total_s == pytest.approx(12 * n / 1e9)  # 1 node at 1 GB/s
    assert asyn.blocked_s == pytest.approx(12 * n / (5e9 * 8))  # 8 GPUs copy at once
    assert asyn.total_s == pytest.approx(asyn.blocked_s + sync.total_s)
    two = save_times(
        compose("vicuna", "full", ["checkpoint.async_save=false", "hardware.num_nodes=2"]), n, n
    )
    assert two.total_s == pytest.approx(sync.total_s / 2)  # every node writes its share
    measured = measured_save_times([2.0, 1.0, 9.0], [30.0, 40.0, 50.0])
    assert measured == SaveTimes(2.0, 40.0, measured=True)  # medians
    assert measured_save_times([], []) is None
    cfg = compose("vicuna", "full")
    p = project(cfg, saves=measured)
    assert p.assumptions["checkpoint_blocked_s"] == 2.0
    assert p.assumptions["checkpoint_save_measured"] is True
    # A save that blocks longer costs more hours.
    slow = project(cfg, saves=SaveTimes(200.0, 400.0, measured=True))
    assert slow.overhead_hours["checkpoints"] > p.overhead_hours["checkpoints"]


def test_the_readme_bills_are_the_projections():
    """The README's recipe table shows `make estimate`'s numbers (ours and the replay)."""
    import re

    from orchestrator.paths import REPO_ROOT

    table = (REPO_ROOT / "README.md").read_text()
    checked = 0
    for line in table.splitlines():
        m = re.match(
            r"\| `(\w+)` \|.*\| ([\d.]+) h, \$([\d,]+) \(.*?\) \| ([\d.]+) h, \$([\d,]+) \|", line
        )
        if not m:
            continue
        job = m.group(1)
        cfg = compose(job, "full")
        ours, replay = project(cfg), project(cfg, replay=True)
        assert f"{ours.hours:.1f}" == m.group(2), (job, ours.hours)
        assert f"{ours.usd:,.0f}" == m.group(3), (job, ours.usd)
        assert f"{replay.hours:.1f}" == m.group(4), (job, replay.hours)
        assert f"{replay.usd:,.0f}" == m.group(5), (job, replay.usd)
        checked += 1
    assert checked == 9  # every fine-tuning recipe's row
    # RL rows without a replay (the original ran another algorithm): ours only
    for line in table.splitlines():
        m = re.match(
            r"\| `(\w+)( variant=\w+)?` \|[^|]*\| [^|]*\| ([\d.]+) h, \$([\d,]+) \(\$([\d,]+)-\$([\d,]+)\) \| - \|",
            line,
        )
        if not m or "stages" in line:
            continue
        variant = [m.group(2).strip()] if m.group(2) else []
        ours = project(compose(m.group(1), "full", variant))
        assert f"{ours.hours:.1f}" == m.group(3), (m.group(1), ours.hours)
        got = [f"{v:,.0f}" for v in (ours.usd, *ours.usd_range)]
        assert got == [m.group(4), m.group(5), m.group(6)], (m.group(1), got)
        checked += 1
    assert checked == 11  # and tiny_zero's (GRPO, and its PPO variant)


def test_cpu_kernel_refit_recovers_the_constants_that_made_the_step_times():
    """`fit_cpu` on runs whose step times were produced by known constants finds them again
    (the refit `python -m orchestrator.cost.calibration --runs` does on recorded runs)."""
    from orchestrator.cost.calibration import RecordedRun, fit_cpu, predicted_step_s
    from orchestrator.cost.estimator import device, model_shape, regime

    cfg = compose("vicuna", "local")
    shape, reg, dev = model_shape(cfg, 2048), regime(cfg), device(cfg)
    runs = []
    for i, tokens in enumerate((128, 512, 2048, 8192)):
        p = Pass(slots=tokens, attn_sq=float(tokens * 64), real=tokens, real_sq=float(tokens * 64))
        run = RecordedRun(f"r{i}", "vicuna", 0.0, shape, reg, dev, [[[p], [p]]])
        run.step_s = predicted_step_s(run, 0.3, 700.0)
        runs.append(run)
    e_max, t_half = fit_cpu(runs)
    assert (e_max, t_half) == pytest.approx((0.3, 700.0), rel=1e-3)


def test_the_catalog_cpu_kernel_is_the_benchmarked_fit():
    """The local scale's constants are the ones bench/local_bills.py fitted, not a placeholder:
    a refit must be copied into the catalog (and the results file keeps the evidence)."""
    import json
    from pathlib import Path

    from orchestrator.compose.load import compose

    bench = json.loads((Path(__file__).parents[2] / "bench/results/local_bills.json").read_text())
    cfg = compose("vicuna", "local")
    k = cfg.cost.cpu_kernel
    assert (k.e_max, k.t_half, k.d_half) == (
        bench["cpu_kernel"]["e_max"],
        bench["cpu_kernel"]["t_half"],
        bench["cpu_kernel"]["d_half"],
    )
    local = cfg.cost.instances[cfg.hardware.instance_type]
    assert (local.startup_s, local.teardown_s) == (
        bench["local_startup_s"],
        bench["local_teardown_s"],
    )
    assert bench["check_worst_wall_error"] <= 0.25 and bench["check_worst_usd_error"] <= 0.25


def test_the_readme_pipeline_bills_are_the_projections():
    """The README's rows of multi-stage recipes show `make estimate`'s totals (spot, range)."""
    import re

    from orchestrator.launch.pipeline import project_pipeline
    from orchestrator.paths import REPO_ROOT

    checked = 0
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        m = re.match(
            r"\| `(\w+)` \|.* (\d+) stages \| ([\d.]+) h, \$([\d,]+) \(\$([\d,]+)-\$([\d,]+)\) \|",
            line,
        )
        if not m:
            continue
        t = project_pipeline(m.group(1), "full")
        # within the table's rounding (a sum of stage projections can sit on a .5 boundary,
        # and the length shapes measured from the shipped samples vary in the last cent)
        assert abs(t["hours"] - float(m.group(3))) <= 0.051, (m.group(1), t)
        for k, g in (("usd", 4), ("usd_low", 5), ("usd_high", 6)):
            assert abs(t[k] - float(m.group(g).replace(",", ""))) <= 0.51, (m.group(1), k, t)
        checked += 1
    assert checked == 3  # stack_llama, stack_llama_2, colossal_chat


def test_estimate_json_has_one_shape_for_single_jobs_and_pipelines(capsys):
    """`estimate JOB --json`: a pipeline's top level carries every key of a single job's
    projection (summed over its stages), plus `stages`; a script reads both the same way."""
    import json

    from orchestrator.__main__ import main

    def estimate(job: str) -> dict:
        assert main(["estimate", job, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    single, pipe = estimate("alpaca"), estimate("stack_llama")
    assert set(single) - {"gpu_memory"} <= set(pipe), set(single) - set(pipe)
    stages = pipe["stages"]
    assert sorted(stages) == ["ppo", "reward", "sft"]
    for key in ("usd", "usd_low", "usd_high", "hours", "usd_spot", "usd_on_demand", "flops"):
        assert pipe[key] == pytest.approx(sum(s[key] for s in stages.values())), key
    for key, value in pipe["overhead_hours"].items():
        assert value == pytest.approx(sum(s["overhead_hours"].get(key, 0) for s in stages.values()))
    assert 0 < pipe["mfu"] <= max(s["mfu"] for s in stages.values())
    assert pipe["instance_type"] == "p4de.24xlarge" and pipe["market"] == "spot"

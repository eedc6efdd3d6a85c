"""Objectives as specs (orchestrator/objectives/): what the schema, the estimator, the fit check,
the pipeline and the entry point look up, and the enumerations derived from one place."""

from __future__ import annotations

import dataclasses
import json

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.errors import ConfigError
from orchestrator.objectives import DATA_KINDS, OBJECTIVES, input_keys, spec


def test_every_objective_is_complete():
    from orchestrator.config.schema import JobConfig
    from orchestrator.training.loop import Trainer
    from orchestrator.training.objective import Objective

    sections = {f.name for f in dataclasses.fields(JobConfig)}
    for name, s in OBJECTIVES.items():
        assert s.name == name and set(s.data_kinds) <= set(DATA_KINDS)
        assert s.work is not None or s.data_kinds == ("sft",), f"{name} has no cost model"
        key = s.settings.key if s.settings else None
        assert key is None or key in sections, f"{name}: no `{key}:` section"
        # its recipe imports, and is an objective behind the trainer's interface: it
        # implements what the trainer calls and is no trainer itself
        cls = s.recipe_class()
        assert issubclass(cls, Objective) and not issubclass(cls, Trainer), name
        for method in ("step_batches", "build", "step", "evaluate", "export"):
            assert getattr(cls, method) is not getattr(Objective, method), (name, method)
        for k in s.input_keys:
            assert k.split(".")[0] == key


def test_an_unknown_objective_names_the_registered_ones():
    with pytest.raises(ConfigError, match="not valid; choose one of.*grpo"):
        compose("vicuna", "local", ["train.objective=rlhf"])
    with pytest.raises(ConfigError, match="registered"):
        spec("rlhf")


def test_an_objective_without_a_cost_model_is_never_priced_as_another(monkeypatch):
    from orchestrator import objectives
    from orchestrator.cost.estimator import device, model_shape, objective_work

    cfg = compose("tiny_zero", "full", [])
    monkeypatch.setitem(objectives.OBJECTIVES, "grpo",
                        dataclasses.replace(OBJECTIVES["grpo"], work=None))  # fmt: skip
    with pytest.raises(ConfigError, match="no cost model"):
        objective_work(cfg, model_shape(cfg), device(cfg), 100.0)


def test_the_data_kind_comes_from_the_spec():
    with pytest.raises(ConfigError, match="it reads data.kind='prompts'"):
        compose("stack_llama", "local", ["stage=ppo", "train.objective=grpo"])
    with pytest.raises(ConfigError, match="cannot read data.kind='prompts'"):
        compose("tiny_zero", "local", ["train.objective=dpo", "train.micro_batch_size=2"])


def test_pipeline_inputs_are_each_objectives_model_keys():
    from orchestrator.launch.pipeline import CONTINUATION_KEYS, INPUT_KEYS

    assert INPUT_KEYS == input_keys()
    assert {"model.pretrained", "ppo.reward_model", "grpo.reward_model"} <= set(INPUT_KEYS)
    assert set(INPUT_KEYS) <= set(CONTINUATION_KEYS)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.group_size=1", "at least 2"),
        ("grpo.reward=reward_model", "needs grpo.reward_model"),
        ("grpo.engine=vllm", "needs CUDA GPUs"),
        ("grpo.epsilon_high=0.1", "clip-higher"),
        ("grpo.loss=ppo", "not valid"),
        ("train.strategy=fsdp", "ddp or deepspeed"),
        ("grpo.max_new_tokens=2000", "max_position_embeddings"),
    ],
)
def test_grpo_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("tiny_zero", "local", [override])


def test_grpo_batches_count_prompts_per_worker_and_completions_per_micro_batch():
    cfg = compose("tiny_zero", "local", ["train.micro_batch_size=16"])  # > prompts per step
    assert cfg.train.global_batch_size == 4
    with pytest.raises(ConfigError, match="multiple of hardware.num_workers = 2"):
        compose("tiny_zero", "local", ["train.global_batch_size=3"])


def test_the_estimator_prices_grpo_generation_by_group_size():
    from orchestrator.cost.estimator import decode_s, device, model_shape, objective_work, project

    def priced(g: int):
        cfg = compose("tiny_zero", "full", [f"grpo.group_size={g}"])
        w = objective_work(cfg, model_shape(cfg), device(cfg), 150.0)
        return w, decode_s(cfg, model_shape(cfg), device(cfg), w), project(cfg)

    (w4, d4, p4), (w8, d8, p8) = priced(4), priced(8)
    assert w8.train_passes == pytest.approx(2 * w4.train_passes)  # G sequences per prompt
    assert d8 > d4 > 0  # decode batches of prompts x G
    assert p8.usd_spot > p4.usd_spot > 0


def test_mixture_sources_choose_from_the_conversation_formats():
    """A mixture source of format `mixture` (or a prompt format) is a ConfigError naming the
    valid formats, not a KeyError."""
    from orchestrator.compose.names import check_data
    from orchestrator.config.schema import DataConfig, SourceConfig

    for bad in ("mixture", "countdown", "text"):
        with pytest.raises(ConfigError, match=r"data.sources\[0\].format=.*choose one of"):
            check_data(DataConfig(format="mixture", template="koala",
                       sources=[SourceConfig(name="a", format=bad, source="x.jsonl")]))  # fmt: skip


def test_format_enumerations_are_derived():
    from orchestrator.compose import names
    from orchestrator.config import schema
    from orchestrator.data.instruct import SAMPLE_ADAPTERS
    from orchestrator.data.preference import FORMATS as PREFERENCE
    from orchestrator.data.prompt_tasks import ADAPTERS

    assert set(schema.PREFERENCE_FORMATS) == set(PREFERENCE)
    assert names.PROMPT_FORMATS == tuple(ADAPTERS)
    assert set(SAMPLE_ADAPTERS) | {"oasst"} == set(names.SOURCE_FORMATS)
    assert set(names.DATA_FORMATS) == set(names.SOURCE_FORMATS) | {"mixture", "text"}


def test_prompt_data_keeps_each_groups_answer_and_refuses_a_tampered_list(tmp_path):
    from orchestrator.data.dataset import build_prepared
    from orchestrator.data.prepared import ANSWERS, BadPreparedData, open_prepared

    cfg = compose("tiny_zero", "local", ["data.tokenizer=null", "data.tokenizer_vocab_size=400"])
    folder = tmp_path / "prepared"
    build_prepared(cfg.data, folder)
    data = open_prepared(folder, verify_hashes=True)
    assert data.groups is not None and data.answers is not None
    assert len(data.answers) == int(data.groups.max()) + 1
    first = json.loads(data.answers[0])
    rows = [json.loads(x) for x in open("data/samples/countdown_sample.jsonl")]
    assert first == {"target": rows[0]["target"], "numbers": rows[0]["nums"]}
    (folder / ANSWERS).write_text(json.dumps(data.answers[:-1] + [7]))
    with pytest.raises(BadPreparedData, match="answers.json"):
        open_prepared(folder)


def test_a_bad_countdown_row_names_its_line(tmp_path):
    from orchestrator.data.formats import DataError
    from orchestrator.data.prompt_tasks import read_tasks

    path = tmp_path / "c.jsonl"
    path.write_text('{"target": 5, "nums": [1, 4]}\n{"target": "five", "nums": [1]}\n')
    got = list(read_tasks(str(path), "countdown"))
    assert got[0].answer == json.dumps({"target": 5, "numbers": [1, 4]})
    assert isinstance(got[1], DataError) and "line 2" in str(got[1]) and "target" in str(got[1])


@pytest.mark.parametrize(
    "job, overrides, message",
    [
        ("stack_llama", ["stage=ppo", "ppo.reward=countdown"], "reads data.kind=prompts"),
        ("tiny_zero", ["variant=ppo", "ppo.ptx_coef=0.5"], "prompt data has none"),
        ("tiny_zero", ["variant=ppo", "ppo.reward=votes"], "not valid"),
    ],
)
def test_ppo_rewards_match_the_data(job, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(job, "local", overrides)


def test_ppo_with_a_verifiable_reward_holds_no_reward_model_and_is_priced_without_one():
    from orchestrator.cost.estimator import device, model_shape, objective_work, total_steps
    from orchestrator.cost.memory import extra_models_bytes

    verifiable = compose("tiny_zero", "full", ["variant=ppo"])
    learned = compose("tiny_zero", "full", ["variant=ppo", "ppo.reward=reward_model"])
    n = 1_000_000
    assert extra_models_bytes(verifiable, n) == 2 * n  # a full fine-tune's frozen reference (bf16)
    assert extra_models_bytes(learned, n) == 4 * n  # + the frozen reward model
    w_v = objective_work(verifiable, model_shape(verifiable), device(verifiable), 150.0)
    w_l = objective_work(learned, model_shape(learned), device(learned), 150.0)
    assert w_l.train_passes > w_v.train_passes  # the reward model's forward
    # prompt data: one example per prompt (not a pair): 2,560 prompts = 10 steps of 256
    assert total_steps(compose("tiny_zero", "full", ["variant=ppo", "train.max_steps=null",
                                                      "train.epochs=1"]), 2560) == 10  # fmt: skip


def test_the_fit_check_counts_vllms_share_of_the_gpu():
    from orchestrator.cost.memory import extra_models_bytes

    hf = compose("tiny_zero", "full", ["grpo.engine=hf"])
    vllm = compose("tiny_zero", "full", ["grpo.engine=vllm", "grpo.vllm_memory_fraction=0.25"])
    gib = vllm.cost.gpus[vllm.hardware.accelerator].memory_gib
    extra = extra_models_bytes(vllm, 10**9) - extra_models_bytes(hf, 10**9)
    assert extra == 0.25 * gib * 2**30


def test_deepspeed_batch_numbers_agree_when_micro_batches_count_completions():
    from orchestrator.training.strategies import deepspeed_config

    cfg = compose("tiny_zero", "local", ["train.strategy=deepspeed", "train.micro_batch_size=8"])
    conf = deepspeed_config(cfg, 2)  # 4 prompts per step, 8 completions per micro-batch
    assert conf["gradient_accumulation_steps"] >= 1
    assert conf["train_batch_size"] == conf["train_micro_batch_size_per_gpu"] * conf[
        "gradient_accumulation_steps"] * 2  # fmt: skip
    sft = compose("vicuna", "full", [])
    assert deepspeed_config(sft, 8)["train_batch_size"] == sft.train.global_batch_size


NEW_OBJECTIVE = '''
"""A new objective, as a user would add it: one module (settings, spec) ..."""
from dataclasses import dataclass

from orchestrator.fields import positive
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings


@dataclass
class ToySettings:
    alpha: float = 1.0

    def __post_init__(self):
        positive("toy.alpha", self.alpha)


SETTINGS = Settings("toy", ToySettings)


def work(cfg, shape, dev, mean_len):
    return ObjectiveWork(train_passes=1.0 + SETTINGS.of(cfg).alpha, tokens=1.0)


SPEC = ObjectiveSpec(name="toy", data_kinds=("sft",), recipe="orchestrator.training.sft:SftObjective",
                     summary="a test objective", work=work, settings=SETTINGS)
'''

REGISTER_AND_USE = """
import sys
sys.path.insert(0, sys.argv[1])
import toy
from orchestrator import objectives
objectives.OBJECTIVES["toy"] = toy.SPEC  # ... and its one line in objectives/__init__.py
from orchestrator.compose.load import compose
from orchestrator.config.errors import ConfigError
from orchestrator.cost.estimator import project

cfg = compose("vicuna", "full", ["train.objective=toy", "toy.alpha=3"])
assert toy.SETTINGS.of(cfg).alpha == 3.0
sft = compose("vicuna", "full", [])
print(round(project(cfg).compute_hours / project(sft).compute_hours, 2))
try:
    compose("vicuna", "local", ["train.objective=toy", "toy.alpha=-1"])
except ConfigError as e:
    print("refused:", e)
"""


def test_a_new_objective_is_one_module_and_one_registration(tmp_path):
    """The schema grows the new objective's section, compose() checks it, the estimator prices
    it with its own work model: nothing central names it (a fresh interpreter, as the
    registry is read when the schema is imported)."""
    import subprocess
    import sys

    (tmp_path / "toy.py").write_text(NEW_OBJECTIVE)
    out = subprocess.run([sys.executable, "-c", REGISTER_AND_USE, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    ratio, refused = out.stdout.strip().splitlines()[-2:]
    assert 3.0 < float(ratio) <= 4.0  # 4 training passes a step vs SFT's 1, less the fixed costs
    assert "toy.alpha" in refused

"""train.objective=eval: evaluate a trained model, training nothing (docs/evaluation.md).

A pipeline's `eval` stage (or `make eval`) reads the export of an earlier stage
(`model.pretrained`, verified as every stage input is), and reports:
- the held-out loss over the job's own held-out split (`eval.loss`);
- answers to a question set in MT-bench's format (`eval.questions`), generated on the workers
  with the recipe's own template and stop text and FastChat's per-category temperatures;
- the judge's grades of those answers, asked by the launcher after the workers are done (the
  judge's API key stays on the launcher's machine), as `eval/*` metrics of the stage's MLflow
  run; the judge's tokens are a line of the bill.

The recipe is orchestrator/evaluation/objective.py; the judge client, the question sets and the
local rubric judge are in orchestrator/evaluation/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.fields import positive as _positive
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig

LOCAL_JUDGE = "local"
"""eval.judge.url=local: the launcher starts the rubric judge on 127.0.0.1 (local scale,
tests): its scores check the plumbing, not quality."""


@dataclass
class JudgeSettings:
    """The judge: any OpenAI-compatible chat-completions endpoint (eval.judge)."""

    url: str = LOCAL_JUDGE
    """Its base URL (https://api.openai.com/v1, a vLLM or TGI server's /v1), or `local`."""
    model: str = "local-rubric"
    """The judge model's name; every score is shown with it (scores compare only under the
    same judge)."""
    api_key_env: str | None = None
    """The name of the environment variable holding its API key, on the launcher's machine
    (never the key: it is not logged, stored or sent to the workers)."""
    usd_per_1m_input_tokens: float | None = None
    usd_per_1m_output_tokens: float | None = None
    """Its prices, when `cost.judges` (the catalog) has no row for `model` or the endpoint
    charges otherwise (a self-hosted judge: its GPU time); None = the catalog's row."""
    price_source: str | None = None
    """Where the two prices above come from (required with them)."""
    prompt_tokens_per_call: int = 900
    completion_tokens_per_call: int = 250
    """Tokens of one judgment, for the estimate before any call."""
    max_concurrency: int = 4
    requests_per_s: float = 2.0
    max_retries: int = 4
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("eval.judge.url is empty: give a base URL or `local`")
        for key in ("usd_per_1m_input_tokens", "usd_per_1m_output_tokens", "requests_per_s"):
            _positive(f"eval.judge.{key}", getattr(self, key), allow_zero=True)
        given = (self.usd_per_1m_input_tokens, self.usd_per_1m_output_tokens)
        if any(x is not None for x in given) and (
            None in given or not (self.price_source or "").strip()
        ):
            raise ConfigError(
                "eval.judge: give usd_per_1m_input_tokens, usd_per_1m_output_tokens and "
                "price_source together (or none, to price the judge from cost.judges)"
            )
        for key in ("max_concurrency", "timeout_s"):
            _positive(f"eval.judge.{key}", getattr(self, key))
        _positive("eval.judge.max_retries", self.max_retries, allow_zero=True)


@dataclass
class EvalSettings:
    """train.objective=eval (docs/evaluation.md)."""

    questions: str = "sample"
    """sample: the local set in MT-bench's format (data/eval/questions_sample.jsonl); mt_bench:
    FastChat's 80 questions, downloaded from a pinned commit and checked; or a JSON-lines file."""
    max_new_tokens: int = 1024
    """Per answer (FastChat's default)."""
    loss: bool = True
    """Also report the held-out loss over the job's held-out split."""
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    base: str | None = None
    """The model the evaluated one was trained from (a reference as model.pretrained takes:
    `base:NAME`, a Hugging Face folder, s3://...): answered on the same workers and graded by
    the same judge, for the gain over it and the bill's dollars per point. A published score
    of the base is not comparable (another judge, other prompts)."""
    baseline: str | None = None
    """Pairwise grading against a baseline's answers (both orders, split verdicts a tie, as
    FastChat counts): `base` (the base's answers, with `base` set), or a JSON-lines file on
    the launcher's machine of {"question_id", "turns": [...]} or FastChat's model_answer rows
    ({"question_id", "choices": [{"turns": [...]}]})."""
    expected_questions: int = 80
    """For the estimate before the set is read: MT-bench has 80."""

    def __post_init__(self) -> None:
        if self.baseline == BASELINE_BASE and not self.base:
            raise ConfigError("eval.baseline=base needs eval.base: the model whose answers it is")
        _positive("eval.max_new_tokens", self.max_new_tokens)
        _positive("eval.expected_questions", self.expected_questions)


BASELINE_BASE = "base"
"""eval.baseline=base: pairwise against eval.base's own answers."""

SETTINGS = Settings("eval", EvalSettings)
"""Its section of the job config (`eval:`), read as SETTINGS.of(cfg)."""

TURNS = 2


def answering_models(cfg: JobConfig) -> int:
    """How many models answer the question set: the evaluated one, and its base if given."""
    return 2 if SETTINGS.of(cfg).base else 1


def judged_answers(cfg: JobConfig) -> int:
    """Judge calls per turn: one grade per answering model, two per pairwise game (both
    orders)."""
    return answering_models(cfg) + (2 if SETTINGS.of(cfg).baseline else 0)


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """The whole evaluation is priced as one step (the estimator's total_steps is 1 for an
    objective that trains nothing): each worker decodes its share of the questions' two
    turns, one batch per turn, `max_new_tokens` decode steps each, for each answering
    model."""
    e = SETTINGS.of(cfg)
    per_worker = -(-e.expected_questions // max(1, cfg.hardware.num_workers))
    return ObjectiveWork(
        train_passes=0.0,
        tokens=0.0,
        decode_tokens=TURNS * e.max_new_tokens * answering_models(cfg),
        decode_batch=per_worker,
        decode_context=int(mean_len) + e.max_new_tokens,
    )


def judge_prices(cfg: JobConfig) -> tuple[float, float, str]:
    """(USD per 1M input tokens, per 1M output tokens, source) of the job's judge: its own
    eval.judge prices when given, else the catalog's row for its model."""
    j = SETTINGS.of(cfg).judge
    if j.usd_per_1m_input_tokens is not None and j.usd_per_1m_output_tokens is not None:
        return j.usd_per_1m_input_tokens, j.usd_per_1m_output_tokens, str(j.price_source)
    row = cfg.cost.judges.get(j.model)
    if row is None:
        raise ConfigError(
            f"eval.judge.model={j.model!r} has no price: the catalog's cost.judges prices "
            f"{sorted(cfg.cost.judges)}; add a row there, or set eval.judge."
            "usd_per_1m_input_tokens, usd_per_1m_output_tokens and price_source"
        )
    return row.usd_per_1m_input_tokens, row.usd_per_1m_output_tokens, row.source


def judge_usd(cfg: JobConfig, calls: int | None = None, tokens: tuple[int, int] | None = None):
    """The judge's price for `tokens` (prompt, completion), or for the expected calls."""
    e = SETTINGS.of(cfg)
    j = e.judge
    if tokens is None:
        n = calls if calls is not None else e.expected_questions * TURNS * judged_answers(cfg)
        tokens = (n * j.prompt_tokens_per_call, n * j.completion_tokens_per_call)
    usd_in, usd_out, _ = judge_prices(cfg)
    return (tokens[0] * usd_in + tokens[1] * usd_out) / 1e6


def extra_bytes(cfg: JobConfig, n_params: int) -> float:
    """What a worker holds besides the weights while it answers: the KV cache of one generate
    call (its share of the questions, at most the model's whole context each; 2 tensors per
    layer). The base, when answering too, replaces the evaluated model on the device."""
    m = cfg.model
    per_worker = -(-SETTINGS.of(cfg).expected_questions // max(1, cfg.hardware.num_workers))
    dtype = 4 if cfg.train.precision == "fp32" else 2
    return 2.0 * m.num_layers * m.hidden_size * dtype * per_worker * m.max_position_embeddings


def check(cfg: JobConfig) -> None:
    if cfg.train.method != "full":
        raise ConfigError(
            f"train.objective=eval trains nothing: train.method must be full (got "
            f"{cfg.train.method!r}); an adapter export is merged into its base when loaded"
        )
    if cfg.train.strategy != "ddp":
        raise ConfigError(
            f"train.objective=eval generates on every worker independently: train.strategy must "
            f"be ddp (got {cfg.train.strategy!r}; a sharded model's forwards are collective)"
        )
    j = SETTINGS.of(cfg).judge
    if j.url != LOCAL_JUDGE and not j.url.startswith(("http://", "https://")):
        raise ConfigError(f"eval.judge.url={j.url!r}: use an http(s) base URL or `local`")
    judge_prices(cfg)  # a judge without a price is refused before anything is spent
    e = SETTINGS.of(cfg)
    if cfg.model.max_position_embeddings <= e.max_new_tokens:
        raise ConfigError(
            f"eval.max_new_tokens={e.max_new_tokens} leaves no room for a prompt in the "
            f"model's {cfg.model.max_position_embeddings} positions "
            "(model.max_position_embeddings): lower eval.max_new_tokens"
        )


SPEC = ObjectiveSpec(
    name="eval",
    data_kinds=("sft",),
    recipe="orchestrator.evaluation.objective:EvalObjective",
    summary="evaluate an export: held-out loss, answers to a question set, a judge's grades",
    work=work,
    settings=SETTINGS,
    from_trained=True,
    extra_usd=lambda cfg: {"judge_api": judge_usd(cfg)},
    trains=False,
    input_keys=("eval.base",),
    launcher="orchestrator.evaluation.stage",
    check=check,
    extra_models_bytes=extra_bytes,
)

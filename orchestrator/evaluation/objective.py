"""The eval stage on the workers: held-out loss and answers to the question set.

No training step is taken (the spec's `trains: false`). At the end, where a training stage
evaluates and exports, this objective:
1. computes the held-out loss over the job's held-out split (as SFT does), when `eval.loss`;
2. answers the question set the launcher put in the run's store (QUESTIONS), each worker its
   share (questions rank::world), turn 1 for all, then turn 2 with the first exchange before
   it, through the rollout-engine interface (transformers `generate` with the KV cache; the
   same interface GRPO samples with), at FastChat's temperature for each category;
3. gathers the answers on rank 0, which writes them to the store (ANSWERS) for the launcher's
   judge, with the generation's tokens and tokens/s as `eval/*` metrics;
4. with `eval.base`, moves the evaluated model off the device, loads the base (fetched and
   verified as every model input is) and answers the same questions with it (BASE_ANSWERS).
"""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as dist

from orchestrator.data.prompts import style
from orchestrator.evaluation.questions import Question, parse_questions
from orchestrator.objectives.eval import SETTINGS as EVAL
from orchestrator.rl.rollout import HfEngine, Sampling
from orchestrator.training.loop import _unwrapped, is_durable, train_dtype
from orchestrator.training.sft import SftObjective

QUESTIONS = "eval/questions.jsonl"
"""The question set as the launcher resolved it (in the run's durable store)."""
ANSWERS = "eval/answers.jsonl"
"""{"question_id", "category", "turns": [answer, ...]} per question, written by rank 0."""
BASE_ANSWERS = "eval/base_answers.jsonl"
"""The same for `eval.base`, when set."""
JUDGMENTS = "eval/judgments.jsonl"
"""The judge's judgments, written by the launcher."""
BASE_JUDGMENTS = "eval/base_judgments.jsonl"
"""Its grades of the base's answers."""
PAIR_JUDGMENTS = "eval/pair_judgments.jsonl"
"""Its pairwise verdicts against eval.baseline."""


def turn_prompt(template: str, q: Question, turn: int, answers: list[str]) -> str:
    """The text the model is prompted with for turn `turn` (1-based): the template's prompt of
    each earlier question followed by the model's own answer, then this turn's prompt (rounds
    concatenated, as FastChat's conversation templates lay out a multi-turn exchange)."""
    st = style(template)
    text = ""
    for t in range(turn - 1):
        text += st.prompt(q.turns[t]) + " " + answers[t] + "\n"
    return text + st.prompt(q.turns[turn - 1])


class EvalObjective(SftObjective):
    """train.objective=eval (orchestrator/objectives/eval.py)."""

    def wrap(self, model):
        return model  # nothing is trained: no method, no activation checkpointing

    def step(self, lr: float):
        raise RuntimeError("train.objective=eval takes no training step")

    @torch.no_grad()
    def evaluate(self) -> float | None:
        e = EVAL.of(self.cfg)
        loss = super().evaluate() if e.loss else None
        text = self.run_store.read_text(QUESTIONS)
        if text is None:
            raise RuntimeError(
                f"{self.run_store.url}/{QUESTIONS}: no question set (the launcher writes it)"
            )
        questions = parse_questions(text, f"{self.run_store.url}/{QUESTIONS}")
        rows, total, slowest = self._answer_all(questions, _unwrapped(self.model), ANSWERS)
        if self.rank == 0:
            self.eval_metrics = {
                "eval/answers": float(len(rows)),
                "eval/answer_tokens": float(total),
                "eval/generation_tokens_per_s": total / max(slowest, 1e-9),
            }
            self.say(f"answered {len(rows)} questions ({total} tokens) in {slowest:.1f} s")
        if e.base:
            self.model.to("cpu")  # room on the device for the base
            base = self._load_base(e.base)
            rows, total, slowest = self._answer_all(questions, base, BASE_ANSWERS)
            if self.rank == 0:
                self.eval_metrics["eval/base_answer_tokens"] = float(total)
                self.say(f"the base answered {len(rows)} questions ({total} tokens) in "
                         f"{slowest:.1f} s")  # fmt: skip
            del base
        return loss

    def _answer_all(self, questions: list[Question], model, rel: str):
        """Every rank answers its share (questions rank::world); rank 0 writes all of them to
        `rel` in the run's store. (rows, answer tokens, the slowest rank's seconds)."""
        t0 = time.perf_counter()
        mine, tokens = self._answer(questions[self.rank :: self.world], model)
        gathered: list = [None] * self.world
        if dist.is_initialized():
            dist.all_gather_object(gathered, (mine, tokens, time.perf_counter() - t0))
        else:
            gathered = [(mine, tokens, time.perf_counter() - t0)]
        rows = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r["question_id"])
        if self.rank == 0:
            self.run_store.write_text(rel, "".join(json.dumps(r) + "\n" for r in rows))
        return rows, sum(n for _, n, _ in gathered), max(s for _, _, s in gathered)

    def _load_base(self, ref: str):
        """eval.base on this node (fetched from the durable store and checked against the
        digest the launcher recorded), in the evaluation's dtype, on this worker's device."""
        from transformers import AutoModelForCausalLM

        digest = self.ctx.model_digests.get("eval.base", "")
        path = str(self.fetch_pretrained(ref, digest)) if is_durable(ref) else ref
        model = AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=train_dtype(self.cfg.train.precision)
        )
        return model.to(self.device).eval()

    def _answer(self, questions: list[Question], model) -> tuple[list[dict], int]:
        """Answer every turn of `questions`; one generate call per (turn, temperature)."""
        from transformers import AutoTokenizer

        e = EVAL.of(self.cfg)
        tok = AutoTokenizer.from_pretrained(self.data.tokenizer_dir)
        st = style(self.cfg.data.template)
        engine = HfEngine(model, self.device)
        answers: dict[int, list[str]] = {q.question_id: [] for q in questions}
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        max_prompt = self.cfg.model.max_position_embeddings - e.max_new_tokens
        tokens = 0
        for turn in (1, 2):
            todo = [q for q in questions if len(q.turns) >= turn]
            for temp in sorted({q.temperature for q in todo}):
                batch = [q for q in todo if q.temperature == temp]
                prompts = [(bos + tok.encode(turn_prompt(self.cfg.data.template, q, turn,
                                                          answers[q.question_id]),
                                              add_special_tokens=False))[-max_prompt:]
                           for q in batch]  # fmt: skip
                self._seed(turn, temp)
                outs = engine.generate(prompts, Sampling(
                    n=1, max_new_tokens=e.max_new_tokens, temperature=temp,
                    eos_id=tok.eos_token_id, pad_id=self.data.pad_id,
                    stop_ids=tuple(st.stop_ids(tok)),
                ))  # fmt: skip
                for q, ids in zip(batch, outs, strict=True):
                    tokens += len(ids)
                    answers[q.question_id].append(
                        st.reply(tok.decode(ids, skip_special_tokens=True))
                    )
        rows = [{"question_id": q.question_id, "category": q.category,
                 "turns": answers[q.question_id]} for q in questions]  # fmt: skip
        return rows, tokens

    def _seed(self, turn: int, temp: float) -> None:
        """Sampled categories draw from (seed, rank, turn): a relaunch answers the same."""
        torch.manual_seed(self.cfg.train.seed * 1000 + self.rank * 10 + turn + int(temp * 100))

    def export(self) -> None:
        """An eval stage exports nothing (its answers and judgments are in the run's store)."""

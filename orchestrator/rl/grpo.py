"""The GRPO stage (train.objective=grpo; settings and cost model: orchestrator/objectives/grpo.py,
maths: rl/grpo_loss.py, rewards: rl/rewards.py, generation: rl/rollout.py).

One step = one GRPO iteration on `train.global_batch_size` prompts: each rank samples
`grpo.group_size` completions of each of its prompts through the rollout engine, scores them,
computes group-relative advantages (a group never spans ranks, so no collective is needed),
then makes `grpo.iterations` optimizer steps over its completions in micro-batches of
`train.micro_batch_size`, syncing the engine's weights after each. Everything random in a step
is seeded by (seed, step, rank): a resumed stage repeats exactly what an uninterrupted one
does (tests/integration/test_rl_stages.py kills one to check).
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from orchestrator.data.prepared import PreparedData
from orchestrator.objectives.grpo import SETTINGS as GRPO
from orchestrator.rl import grpo_loss
from orchestrator.rl.batches import GroupBatches, prompt_ids
from orchestrator.rl.models import ScoreModel, load_score_model, pool, token_logprobs
from orchestrator.rl.recipes import _dtype, _GroupObjective
from orchestrator.rl.rewards import reward_fn
from orchestrator.rl.rollout import HfEngine, RolloutEngine, Sampling, VllmEngine
from orchestrator.training.loop import StepWork, _unwrapped, base_dtype, is_durable
from orchestrator.training.methods import apply_method
from orchestrator.training.model import build_model, quantized_kwargs
from orchestrator.training.sft import export_policy


class GrpoObjective(_GroupObjective):
    """GRPO: the loop's steps of prompt groups, its own iteration; the model is the policy
    itself (no value head), exported as a fine-tune is."""

    engine: RolloutEngine | None = None

    def build(self, data: PreparedData):
        cfg, g = self.cfg, GRPO.of(self.cfg)
        if g.reward != "reward_model" and data.answers is None:
            raise RuntimeError(
                f"{self.ctx.data_url}: prompt data without answers.json: grpo.reward={g.reward} "
                "checks completions against answers (data.kind=prompts)"
            )
        policy = build_model(cfg.model, data.vocab_size, dtype=base_dtype(cfg))
        self.reference = None
        if g.beta > 0 and cfg.train.method != "lora":  # LoRA: the adapter disabled instead
            self.reference = build_model(cfg.model, data.vocab_size, dtype=_dtype(cfg))
            self.reference.to(self.device).eval().requires_grad_(False)
        policy = apply_method(policy, cfg)
        if cfg.train.activation_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.reward_model = None
        if g.reward == "reward_model":
            quantized = quantized_kwargs(cfg.model)
            rm = load_score_model(self._local_model_of("grpo.reward_model", g.reward_model),
                                  data.vocab_size, data.pad_id, cfg.train.seed, _dtype(cfg),
                                  quantized)  # fmt: skip
            self.reward_model = ScoreModel(rm)
            if not quantized:
                self.reward_model.to(self.device)
            self.reward_model.eval().requires_grad_(False)
        else:
            self.verify = reward_fn(g.reward, g.format_score)
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
        self.eos_id = self.tok.eos_token_id
        self._last: dict[str, float] = {}
        return policy

    def _local_model_of(self, key: str, ref: str | None) -> str:
        if ref is None:
            raise RuntimeError(f"{key} is not set")
        digest = self.ctx.model_digests.get(key, "")
        return str(self.fetch_pretrained(ref, digest)) if is_durable(ref) else ref

    def group_batches(self, examples, group_ids) -> GroupBatches:
        cfg = self.cfg  # micro-batches are of completions (made here), not of prompts
        return GroupBatches(
            examples, group_ids, groups_per_step=cfg.train.global_batch_size, micro_groups=1,
            world_size=self.world, rank=self.rank, seed=cfg.train.seed, pad_id=self.data.pad_id,
        )  # fmt: skip

    def _seed(self, salt: int) -> None:
        """Everything random in a step: seeded by (seed, step, rank, what)."""
        torch.manual_seed(
            (self.cfg.train.seed * 1_000_003 + self.step_index) * 7919 + self.rank * 31 + salt
        )

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    # --------------------------------------------------------------- the engine
    def _engine(self) -> RolloutEngine:
        if self.engine is None:
            policy = _unwrapped(self.model)
            if GRPO.of(self.cfg).engine == "vllm":  # pragma: no cover - GPUs with vLLM only
                ref = self.cfg.model.pretrained or ""
                local = self._local_model_of("model.pretrained", ref)
                self.engine = VllmEngine(local, seed=self.cfg.train.seed,
                                         gpu_memory_utilization=GRPO.of(self.cfg).vllm_memory_fraction)  # fmt: skip
                self.engine.sync_weights(policy)  # a resumed policy is not the starting one
            else:
                self.engine = HfEngine(policy, self.device)
        return self.engine

    def _sampling(self, n: int) -> Sampling:
        g = GRPO.of(self.cfg)
        return Sampling(n=n, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                        top_p=g.top_p, top_k=g.top_k, pad_id=self.data.pad_id,
                        eos_id=self.eos_id if g.stop_at_eos else None)  # fmt: skip

    # --------------------------------------------------------------- one iteration
    def _rows(self, prompts: list[list[int]], completions: list[list[int]], n: int):
        """Prompt + completion rows, right-padded: (ids, attention mask, completion mask over
        the log-prob positions [B, T-1])."""
        rows = [prompts[i // n] + c for i, c in enumerate(completions)]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.data.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        act = torch.zeros((len(rows), t - 1))
        for i, (r, c) in enumerate(zip(rows, completions, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            act[i, len(r) - len(c) - 1 : len(r) - 1] = 1.0  # position t scores token t+1
        return ids.to(self.device), mask.to(self.device), act.to(self.device)

    @torch.no_grad()
    def _rewards(self, ids, mask, texts: list[str], answers: list[str]) -> torch.Tensor:
        if self.reward_model is not None:
            with self.strategy.autocast():
                scores = self.reward_model(ids, mask)
            return pool(scores, mask, GRPO.of(self.cfg).reward_pooling).float().cpu()
        return torch.tensor([self.verify(t, a) for t, a in zip(texts, answers, strict=True)])

    @torch.no_grad()
    def _logps(self, model, ids, mask, mini: int) -> torch.Tensor:
        out = []
        for s in range(0, ids.shape[0], mini):
            with self.strategy.autocast():
                logits = model(input_ids=ids[s : s + mini], attention_mask=mask[s : s + mini],
                               use_cache=False).logits  # fmt: skip
            out.append(token_logprobs(logits, ids[s : s + mini]).float())
        return torch.cat(out)

    def _ref_logps(self, ids, mask, mini: int) -> torch.Tensor | None:
        if GRPO.of(self.cfg).beta == 0:
            return None
        if self.reference is not None:
            return self._logps(self.reference, ids, mask, mini)
        policy = _unwrapped(self.model)
        with policy.disable_adapter():
            return self._logps(policy, ids, mask, mini)

    def step(self, lr: float) -> StepWork:
        cfg, g = self.cfg, GRPO.of(self.cfg)
        n, mini = g.group_size, cfg.train.micro_batch_size
        self._seed(0)
        prompts = [q[-g.max_prompt_tokens :] for q in self.batches.prompts(self.step_index)]
        answers = [self.data.answers[i] if self.data.answers else ""
                   for i in self.batches.rank_group_ids(self.step_index) for _ in range(n)]  # fmt: skip
        t0 = time.perf_counter()
        with self.strategy.autocast():
            completions = self._engine().generate(prompts, self._sampling(n))
        t1 = time.perf_counter()
        ids, mask, act = self._rows(prompts, completions, n)
        texts = self.tok.batch_decode(completions, skip_special_tokens=True)
        rewards = self._rewards(ids, mask, texts, answers)
        adv = grpo_loss.group_advantages(rewards, n, g.scale_rewards).to(self.device)
        self.model.eval()
        ref_logp = self._ref_logps(ids, mask, mini)
        old_logp = self._logps(self.model, ids, mask, mini) if g.iterations > 1 else None
        t2 = time.perf_counter()
        lens = act.sum(1)
        # One all-reduce for the step's totals: the loss normaliser needs them before the
        # updates, the logs after.
        agg = torch.tensor([len(completions), float(lens.sum()), float(rewards.sum()),
                            float((rewards**2).sum())], device=self.device, dtype=torch.float64)  # fmt: skip
        dist.all_reduce(agg)
        n_glob, tok_glob = int(agg[0]), int(agg[1])
        denom = grpo_loss.normaliser(g.loss, n_glob, tok_glob, g.max_new_tokens)
        eps_high = g.epsilon_high if g.epsilon_high is not None else g.epsilon
        total = torch.zeros((), device=self.device)
        sums = {k: torch.zeros((), device=self.device) for k in ("grpo/kl", "grpo/clipfrac")}
        grad_norm = float("nan")
        self.model.train()
        b = ids.shape[0]
        for _ in range(g.iterations):
            for s in range(0, b, mini):
                idx = slice(s, s + mini)
                with self.strategy.autocast():
                    logits = self.model(input_ids=ids[idx], attention_mask=mask[idx],
                                        use_cache=False).logits  # fmt: skip
                logp = token_logprobs(logits, ids[idx]).float()
                old = old_logp[idx] if old_logp is not None else logp.detach()
                ref = ref_logp[idx] if ref_logp is not None else None
                per_tok, clipped, kl = grpo_loss.token_loss(logp, old, adv[idx], ref, g.epsilon,
                                                            eps_high, g.beta)  # fmt: skip
                part = grpo_loss.step_sum(per_tok, act[idx], g.loss) / denom
                self.strategy.backward(part * self.world, last_micro_batch=s + mini >= b)
                total += part.detach() * n_glob / g.iterations
                m = act[idx]
                per_seq = m.sum(1).clamp(min=1.0)
                sums["grpo/kl"] += ((kl.detach() * m).sum(1) / per_seq).sum() / g.iterations
                sums["grpo/clipfrac"] += ((clipped * m).sum(1) / per_seq).sum() / g.iterations
            grad_norm = self.strategy.step(lr, cfg.optim.grad_clip)
            self._engine().sync_weights(_unwrapped(self.model))
        t3 = time.perf_counter()
        mean = float(agg[2]) / n_glob
        self._last = {
            "grpo/reward_std": math.sqrt(max(0.0, float(agg[3]) / n_glob - mean * mean)),
            "grpo/gen_tokens_per_s": tok_glob / self.world / max(t1 - t0, 1e-9),
            "grpo/time_generate_s": t1 - t0, "grpo/time_score_s": t2 - t1,
            "grpo/time_update_s": t3 - t2,
        }  # fmt: skip
        sums["grpo/reward_mean"] = rewards.sum().to(self.device).float()
        sums["grpo/completion_len"] = lens.sum().float()
        # loss_sum: summed over ranks and divided by the step's completions, the step's loss.
        return StepWork(total / self.world, n_glob, int(mask.sum()) * self.world, ids.numel()
                        * self.world, grad_norm, sums)  # fmt: skip

    # --------------------------------------------------------------- held out
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """The mean reward of one greedy-free sampled completion per held-out prompt (seeded)."""
        data = self.data
        if data.groups is None or not len(data.eval):
            return None
        held = self._group_batches_all(data.eval, data.groups[data.eval.rows()])
        groups = list(range(len(held.groups)))[self.rank :: self.world] or [0]
        prompts = [prompt_ids(held.replies(i)[0])[-GRPO.of(self.cfg).max_prompt_tokens :]
                   for i in groups]  # fmt: skip
        answers = [data.answers[held.group_ids[i]] if data.answers else "" for i in groups]
        self._seed(10_000)
        with self.strategy.autocast():
            completions = self._engine().generate(prompts, self._sampling(1))
        ids, mask, _ = self._rows(prompts, completions, 1)
        texts = self.tok.batch_decode(completions, skip_special_tokens=True)
        rewards = self._rewards(ids, mask, texts, answers)
        agg = torch.tensor([float(rewards.sum()), float(len(rewards))], device=self.device)
        dist.all_reduce(agg)
        self.eval_metrics = {"grpo/eval_reward_mean": float(agg[0] / agg[1])}
        return None

    def export(self) -> None:
        export_policy(self)  # the policy, as SFT exports it

"""Reward-model, DPO and PPO stages: the fine-tuning recipe (training/loop.py) with another step.

Each class keeps everything else of the loop: strategies, checkpoints with the same data order
and MLflow run, spot notices, the budget cap, cost metrics and the export. What differs:

- `RewardObjective` (train.objective=reward): a scalar head on the model (`ScoreModel`); batches
  are ranked groups; the pairwise or OpenAssistant K-wise loss; held-out `reward/accuracy`
  (pairs in the right order) and `reward/best_vs_worst`. Exports a sequence-classification
  model folder (LoRA merged) that `AutoModelForSequenceClassification` loads.
- `DpoObjective` (train.objective=dpo): DPO/cDPO against a frozen reference: the same model with
  its LoRA adapter disabled (no extra memory) or a frozen copy (full fine-tune). Held-out
  `dpo/accuracy` and `dpo/reward_margin`.
- `PpoObjective` (train.objective=ppo): one step = one PPO iteration (generate, score, update).
  Everything random in an iteration is seeded by (seed, step, rank), and the KL controller's
  coefficient is in the checkpoint manifest, so a resumed stage repeats exactly what an
  uninterrupted one does (tests/integration/test_rl_stages.py kills one to check).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.data.batching import collate
from orchestrator.data.prepared import PreparedData
from orchestrator.data.templates import IGNORE_INDEX
from orchestrator.objectives.dpo import SETTINGS as DPO
from orchestrator.objectives.ppo import SETTINGS as PPO
from orchestrator.objectives.reward import SETTINGS as REWARD
from orchestrator.rl import kl as klmod
from orchestrator.rl import ppo
from orchestrator.rl.batches import GroupBatches
from orchestrator.rl.losses import completion_logprobs, dpo_loss, ranking_loss
from orchestrator.rl.models import (
    PolicyValue,
    ScoreModel,
    entropy,
    load_score_model,
    pool,
    token_logprobs,
)
from orchestrator.rl.rollout import HfEngine, Sampling
from orchestrator.storage.layout import DPO_REFERENCE, EXPORT
from orchestrator.training.export import (
    SAMPLE_MAX_PARAMS,
    export_mode,
    export_whole,
    load_export,
    sample_generations,
)
from orchestrator.training.loop import (
    StepWork,
    _unwrapped,
    base_dtype,
    is_durable,
    loss_sum,
    to_device,
)
from orchestrator.training.methods import apply_method
from orchestrator.training.model import build_model, quantized_kwargs
from orchestrator.training.objective import Objective
from orchestrator.training.sft import export_policy


def reference_cache_key(reference: str, data_key: str, rows: int, precision: str) -> str:
    """Pure: what the DPO reference log-probs depend on: the reference model's digest, the
    prepared data's key, the row count and the precision they were computed in."""
    body = json.dumps([reference, data_key, rows, precision])
    return hashlib.sha256(body.encode()).hexdigest()


def write_reference_cache(key: str, values: list[float]) -> str:
    body = json.dumps(values)
    return json.dumps({"key": key, "sha256": hashlib.sha256(body.encode()).hexdigest(),
                       "values": values})  # fmt: skip


def read_reference_cache(text: str, key: str, rows: int) -> list[float] | None:
    """Pure: the cached values when the file is this key's and unchanged since it was written
    (its own SHA-256), all finite, one per row; else None (compute them again)."""
    import math

    try:
        d = json.loads(text)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("key") != key or not isinstance(d.get("values"), list):
        return None
    values = d["values"]
    if hashlib.sha256(json.dumps(values).encode()).hexdigest() != d.get("sha256"):
        return None
    ok = len(values) == rows and all(
        isinstance(v, int | float) and math.isfinite(v) for v in values
    )
    return values if ok else None


def _dtype(cfg) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


class _GroupObjective(Objective):
    """Shared by reward models, DPO, PPO and GRPO: steps of ranked groups (or prompts), held-out
    metrics per group. Every rank loads its whole model (DDP / ZeRO-2; see the schema's check)
    and `build` applies the method to the right part. Subclasses give `group_step` (the loss of
    a micro-batch of groups) or their own `step`."""

    def step_batches(self, data: PreparedData) -> GroupBatches:  # type: ignore[override]
        if data.groups is None:
            raise RuntimeError(f"{self.ctx.data_url}: not preference data (no groups.npy)")
        return self.group_batches(data.train, data.groups[data.train.rows()])

    def group_batches(self, examples, group_ids) -> GroupBatches:
        cfg = self.cfg
        return GroupBatches(
            examples, group_ids, groups_per_step=cfg.train.global_batch_size,
            micro_groups=cfg.train.micro_batch_size, world_size=self.world, rank=self.rank,
            seed=cfg.train.seed, pad_id=self.data.pad_id,
        )  # fmt: skip

    def group_step(
        self, mb: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over the micro-batch's groups, metric sums) for one micro-batch."""
        raise NotImplementedError

    def step(self, lr: float) -> StepWork:
        micro_batches, n_groups = self.batches.step(self.step_index)
        self.model.train()
        total = torch.zeros((), device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro_batches):
            mb = to_device(mb, self.device)
            with self.strategy.autocast():
                loss, metrics = self.group_step(mb)
            # Gradients are averaged over ranks: the result is the mean over the step's groups.
            self.strategy.backward(
                loss * self.world / n_groups, last_micro_batch=i == len(micro_batches) - 1
            )
            total += loss.detach().float()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
        grad_norm = self.strategy.step(lr, self.cfg.optim.grad_clip)
        real, padded = self.batches.tokens(self.step_index)
        return StepWork(total, n_groups, real, padded, grad_norm, sums)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Held-out loss and metrics over every held-out group. Every rank runs the same number
        of forwards; ranks past the end repeat a batch with weight 0."""
        data = self.data
        if data.groups is None or not len(data.eval):
            return None
        held = self._group_batches_all(data.eval, data.groups[data.eval.rows()])
        self.model.eval()
        per = self.cfg.train.micro_batch_size
        n_batches = math.ceil(len(held.groups) / (per * self.world))
        totals: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.device)
        for b in range(n_batches):
            start = (b * self.world + self.rank) * per
            chunk = list(range(start, min(start + per, len(held.groups))))
            weight = 1.0 if chunk else 0.0
            mb = held.collate_groups(chunk or [0])
            with self.strategy.autocast():
                loss, metrics = self.group_step(to_device(mb, self.device))
            for k, v in {"eval_loss": loss.detach().float(), **metrics}.items():
                totals[k] = totals.get(k, 0) + weight * v
            count += len(chunk)
        names = sorted(totals)
        stacked = torch.stack([*(totals[k] for k in names), count])
        dist.all_reduce(stacked)
        values = (stacked[:-1] / stacked[-1].clamp(min=1)).tolist()
        out = dict(zip(names, values, strict=True))
        eval_loss = out.pop("eval_loss")
        self.eval_metrics = out
        return eval_loss

    def _group_batches_all(self, examples, group_ids) -> GroupBatches:
        """All held-out groups in file order (one step holding every group); `rows` ids after
        the training set's."""
        n = len(set(group_ids.tolist()))
        return GroupBatches(examples, group_ids, groups_per_step=n, micro_groups=1,
                            world_size=1, rank=0, seed=0, pad_id=self.data.pad_id,
                            offset=len(self.data.train))  # fmt: skip


class RewardObjective(_GroupObjective):
    """A reward model: the pairwise or K-wise ranking loss on a scalar head."""

    def build(self, data: PreparedData):
        cfg = self.cfg
        lm = load_score_model(cfg.model.pretrained, data.vocab_size, data.pad_id, cfg.train.seed,
                              base_dtype(cfg), quantized_kwargs(cfg.model))  # fmt: skip
        if cfg.train.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return ScoreModel(apply_method(lm, cfg, task_type="SEQ_CLS"))

    def group_step(self, mb):
        scores = pool(self.model(mb["input_ids"], mb["attention_mask"]), mb["attention_mask"],
                      REWARD.of(self.cfg).pooling)  # fmt: skip
        sizes = mb["group_sizes"].tolist()
        l2 = REWARD.of(self.cfg).l2 if REWARD.of(self.cfg).loss == "ranking" else 0.0
        loss = ranking_loss(scores, sizes, l2=l2) * len(sizes)  # summed over groups
        acc = bvw = margin = 0.0
        at = 0
        s = scores.detach()
        for k in sizes:
            g = s[at : at + k]
            at += k
            i, j = torch.triu_indices(k, k, offset=1, device=g.device)
            acc += float((g[i] > g[j]).float().mean())
            bvw += float(g[0] > g[k - 1])
            margin += float(g[0] - g[k - 1])
        dev = self.device
        return loss, {
            "reward/accuracy": torch.tensor(acc, device=dev),
            "reward/best_vs_worst": torch.tensor(bvw, device=dev),
            "reward/margin": torch.tensor(margin, device=dev),
        }

    @torch.no_grad()
    def export(self) -> None:
        """A sequence-classification folder (LoRA merged) + tokenizer, and a probe: the scores
        of a few held-out replies, to check the export against the trained model."""
        out = self.export_dir()
        if self.rank == 0:
            lm = _unwrapped(self.model).lm
            self.model.eval()
            probe = collate((self.data.eval or self.data.train)[:2], self.data.pad_id)
            scores = pool(_unwrapped(self.model)(probe["input_ids"].to(self.device),
                                                 probe["attention_mask"].to(self.device)),
                          probe["attention_mask"].to(self.device), REWARD.of(self.cfg).pooling)  # fmt: skip
            # LoRA merged layer by layer into the base's weights (an 8-bit base: its original
            # weights), written one tensor at a time: no second copy of the model.
            hashed = export_whole(lm, self.cfg, Path(self.data.tokenizer_dir), out,
                                  self.base_ref, mode="model")  # fmt: skip
            torch.save({**probe, "scores": scores.float().cpu(),
                        "pooling": REWARD.of(self.cfg).pooling}, out / "probe.pt")  # fmt: skip
            self.publish_export(out, "reward_model", hashed)
        if dist.is_initialized():
            dist.barrier()


class DpoObjective(_GroupObjective):
    """DPO / cDPO: chosen = a group's best reply, rejected = its worst. The reference's
    log-probs (dpo.reference): the LoRA model with its adapter disabled, a frozen copy of the
    starting model on every worker, or cached: computed once per run by a temporary copy (each
    worker its share) and kept in the run's durable folder, where a resumed stage reads them."""

    def build(self, data: PreparedData):
        cfg = self.cfg
        policy = apply_method(build_model(cfg.model, data.vocab_size, dtype=base_dtype(cfg)), cfg)
        mode = DPO.of(cfg).reference
        if mode == "auto":
            mode = "adapter" if cfg.train.method == "lora" else "copy"
        if mode == "adapter" and cfg.train.method != "lora":
            raise RuntimeError("dpo.reference=adapter needs train.method=lora")
        self.ref_mode = mode
        self.reference = None
        self.ref_cache: torch.Tensor | None = None
        if mode == "copy":  # a frozen copy of the starting model, never wrapped or trained
            self.reference = self._starting_model(data)
        if cfg.train.activation_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return policy

    def _starting_model(self, data: PreparedData):
        """The starting model, frozen, in the training dtype (bf16 on GPUs), on the device."""
        model = build_model(self.cfg.model, data.vocab_size, dtype=_dtype(self.cfg))
        return model.to(self.device).eval().requires_grad_(False)

    def export(self) -> None:
        export_policy(self)  # the policy, as SFT exports it (the reference is not trained)

    def ready(self) -> None:
        if self.ref_mode == "cached":
            self.ref_cache = self._reference_cache().to(self.device)

    @torch.no_grad()
    def _reference_cache(self) -> torch.Tensor:
        """Completion log-probs of every training and held-out reply under the starting model,
        indexed like the micro-batches' `rows`."""
        text = self.run_store.read_text(DPO_REFERENCE)
        train, held = self.data.train, self.data.eval
        total = len(train) + len(held)
        key = reference_cache_key(
            self.ctx.model_digests.get("model.pretrained", ""), self.data.key, total,
            self.cfg.train.precision,
        )  # fmt: skip
        if text:
            cached = read_reference_cache(text, key, total)
            if cached is not None:
                return torch.tensor(cached, dtype=torch.float32)
            self.say(f"warning: {DPO_REFERENCE} is not this reference's on this data (or was "
                        "changed since it was written); computing it again")  # fmt: skip
        reference = self._starting_model(self.data)
        mine = list(range(self.rank, total, self.world))
        values: dict[int, float] = {}
        for i in range(0, len(mine), 8):
            idx = mine[i : i + 8]
            rows = [train[j] if j < len(train) else held[j - len(train)] for j in idx]
            mb = to_device(collate(rows, self.data.pad_id), self.device)
            with self.strategy.autocast():
                logits = reference(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                   use_cache=False).logits  # fmt: skip
            lp = completion_logprobs(logits, mb["input_ids"], (mb["labels"] != IGNORE_INDEX).long())
            values.update(zip(idx, lp.float().tolist(), strict=True))
        del reference
        parts: list[dict[int, float]] = [{} for _ in range(self.world)]
        if dist.is_initialized():
            dist.all_gather_object(parts, values)
        else:
            parts = [values]
        merged = [0.0] * total
        for part in parts:
            for j, v in part.items():
                merged[j] = v
        if self.rank == 0:
            self.run_store.write_text(DPO_REFERENCE, write_reference_cache(key, merged))
            self.say(f"reference log-probs of {total} replies cached: {DPO_REFERENCE}")
        return torch.tensor(merged, dtype=torch.float32)

    def _ref_logps(self, ids, mask, completion, rows) -> torch.Tensor:
        if self.ref_cache is not None:
            return self.ref_cache[rows]
        if self.reference is not None:
            logits = self.reference(input_ids=ids, attention_mask=mask, use_cache=False).logits
        else:
            with _unwrapped(self.model).disable_adapter():
                logits = _unwrapped(self.model)(
                    input_ids=ids, attention_mask=mask, use_cache=False
                ).logits
        return completion_logprobs(logits, ids, completion)

    def group_step(self, mb):
        sizes = mb["group_sizes"].tolist()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        pick = torch.tensor([r for s, k in zip(starts, sizes, strict=True) for r in (s, s + k - 1)],
                            device=mb["input_ids"].device)  # fmt: skip
        ids, mask = mb["input_ids"][pick], mb["attention_mask"][pick]
        completion = (mb["labels"][pick] != IGNORE_INDEX).long()
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logp = completion_logprobs(logits, ids, completion)
        with torch.no_grad():
            ref = self._ref_logps(ids, mask, completion, mb["rows"][pick])
        d = DPO.of(self.cfg)
        out = dpo_loss(logp[0::2], logp[1::2], ref[0::2], ref[1::2], d.beta, d.label_smoothing)
        n = len(sizes)
        dev = self.device
        return out.loss * n, {
            "dpo/accuracy": torch.tensor(out.accuracy * n, device=dev),
            "dpo/reward_margin": torch.tensor(out.margin * n, device=dev),
            "dpo/reward_chosen": out.reward_chosen.sum().float(),
            "dpo/reward_rejected": out.reward_rejected.sum().float(),
        }


class PpoObjective(_GroupObjective):
    """PPO from a reward model (see orchestrator/rl/ppo.py for the two originals' switches)."""

    def build(self, data: PreparedData):
        """The policy (method applied) with its value head or critic; besides, the frozen
        reference, the reward (a model or a verifier), the KL controller and the tokenizer."""
        cfg, p = self.cfg, PPO.of(self.cfg)
        learned = p.reward == "reward_model"
        if not learned and data.answers is None:
            raise RuntimeError(
                f"{self.ctx.data_url}: prompt data without answers.json: ppo.reward={p.reward} "
                "checks replies against answers (data.kind=prompts)"
            )
        rm_path = self._local_model(p.reward_model) if learned else None
        policy = build_model(cfg.model, data.vocab_size, dtype=base_dtype(cfg))
        self.reference = self._reference(data)
        policy = apply_method(policy, cfg)
        if cfg.train.activation_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        critic = self._critic(data, rm_path)
        self.reward_model, self.verify = self._rewarder(data, rm_path)
        self.kl_ctl = (klmod.adaptive(p.kl_coef, p.kl_target, p.kl_horizon) if p.kl == "adaptive"
                       else klmod.fixed(p.kl_coef))  # fmt: skip
        self._last: dict[str, float] = {}
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
        self.eos_id = self.tok.eos_token_id
        return PolicyValue(policy, critic, cfg.train.seed)

    def ready(self) -> None:
        """The rollout engine on the trained policy (as the strategy wrapped it)."""
        self.engine = HfEngine(_unwrapped(self.model).policy, self.device)

    def _reference(self, data: PreparedData):
        """The starting policy, frozen (ColossalChat), read in the training dtype (no fp32 copy
        of the policy); None with LoRA: the policy with its adapter disabled is the reference."""
        if self.cfg.train.method == "lora":
            return None
        ref = build_model(self.cfg.model, data.vocab_size, dtype=_dtype(self.cfg))
        return ref.to(self.device).eval().requires_grad_(False)

    def _critic(self, data: PreparedData, rm_path: str | None):
        """`ppo.value_model: critic`: from the reward model (ColossalChat), else from the
        starting policy with a new head (TinyZero's veRL critic); trained in full. None: a
        value head on the policy."""
        cfg = self.cfg
        if PPO.of(cfg).value_model != "critic":
            return None
        start = rm_path or self._local_model_at("model.pretrained", cfg.model.pretrained)
        return ScoreModel(load_score_model(start, data.vocab_size, data.pad_id, cfg.train.seed,
                                           base_dtype(cfg)))  # fmt: skip

    def _rewarder(self, data: PreparedData, rm_path: str | None):
        """(the frozen reward model, None) or (None, the verifier of `ppo.reward`)."""
        cfg = self.cfg
        if rm_path is None:
            from orchestrator.rl.rewards import reward_fn

            return None, reward_fn(PPO.of(cfg).reward, PPO.of(cfg).format_score)
        # In 8-bit when the job's bases are (as StackLLaMA's PPO loaded it), else in the
        # training dtype.
        quantized = quantized_kwargs(cfg.model)
        rm = ScoreModel(load_score_model(rm_path, data.vocab_size, data.pad_id, cfg.train.seed,
                                         _dtype(cfg), quantized))  # fmt: skip
        if not quantized:  # an 8-bit model is placed on its device as it loads
            rm.to(self.device)
        return rm.eval().requires_grad_(False), None

    def _local_model_at(self, key: str, ref: str | None) -> str:
        if ref is None:
            raise RuntimeError(f"{key} is not set")
        digest = self.ctx.model_digests.get(key, "")
        return str(self.fetch_pretrained(ref, digest)) if is_durable(ref) else ref

    @torch.no_grad()
    def _scores(self, ids, mask, reply, answers: list[str]) -> torch.Tensor:
        """One score per reply: the reward model's (pooled), or the verifiable reward of the
        reply's text against its prompt's answer."""
        if self.reward_model is not None:
            return pool(self.reward_model(ids, mask), mask, PPO.of(self.cfg).reward_pooling)
        assert self.verify is not None
        rows = [r[m.bool()].tolist() for r, m in zip(ids.cpu(), reply.cpu(), strict=True)]
        texts = self.tok.batch_decode(rows, skip_special_tokens=True)
        got = [self.verify(t, a) for t, a in zip(texts, answers, strict=True)]
        return torch.tensor(got, device=ids.device, dtype=torch.float32)

    def _answers(self, group_ids: list[int]) -> list[str]:
        answers = self.data.answers
        return [answers[g] for g in group_ids] if answers is not None else [""] * len(group_ids)

    def _local_model(self, ref: str | None) -> str:
        return self._local_model_at("ppo.reward_model", ref)

    # --------------------------------------------------------------- state in the manifest
    def state(self) -> dict[str, Any]:
        return {"ppo": {"kl_coef": self.kl_ctl.value}}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        saved = state.get("ppo")
        if not isinstance(saved, dict) or not isinstance(saved.get("kl_coef"), int | float):
            raise RuntimeError(f"{path}: a PPO checkpoint without ppo.kl_coef in its manifest")
        self.kl_ctl = klmod.KlController(float(saved["kl_coef"]), self.kl_ctl.target,
                                         self.kl_ctl.horizon)  # fmt: skip

    def metrics(self) -> dict[str, float]:
        return {"rl/kl_coef": self.kl_ctl.value, **self._last}

    # --------------------------------------------------------------- one iteration
    def _seed(self, salt: int) -> None:
        torch.manual_seed(
            (self.cfg.train.seed * 1_000_003 + self.step_index) * 7919 + self.rank * 31 + salt
        )

    @torch.no_grad()
    def _generate(
        self, prompts: list[list[int]], engine: HfEngine | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Sampled replies (the rollout engine: transformers `generate` with the KV cache, as
        GRPO's), right-padded with the prompts: (ids [B, T], attention mask, reply mask, reply
        tokens)."""
        p = PPO.of(self.cfg)
        pad = self.data.pad_id
        prompts = [q[-p.max_prompt_tokens :] for q in prompts]
        n_new = p.max_new_tokens
        if p.min_new_tokens is not None:  # StackLLaMA's LengthSampler, one draw per iteration
            n_new = int(torch.randint(p.min_new_tokens, p.max_new_tokens + 1, (1,)))
        sampling = Sampling(n=1, max_new_tokens=n_new, temperature=p.temperature, top_p=p.top_p,
                            top_k=p.top_k, eos_id=self.eos_id if p.stop_at_eos else None,
                            pad_id=pad)  # fmt: skip
        completions = (engine or self.engine).generate(prompts, sampling)
        _unwrapped(self.model).policy.eval()  # (scoring and the old log-probs run in eval mode)
        rows, spans = [], []
        for q, r in zip(prompts, completions, strict=True):
            rows.append(q + r)
            spans.append((len(q), len(r)))
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        reply = torch.zeros_like(ids)
        for i, (r, (lq, lr)) in enumerate(zip(rows, spans, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            reply[i, lq : lq + lr] = 1
        return ids, mask, reply, sum(lr for _, lr in spans)

    @torch.no_grad()
    def _score(self, ids, mask, reply, answers: list[str]) -> dict[str, torch.Tensor]:
        """Old log-probs and values, reference log-probs, reward-model scores, advantages."""
        p = PPO.of(self.cfg)
        net = _unwrapped(self.model)
        net.eval()
        logits, values = net(ids, mask)
        logp = token_logprobs(logits, ids)
        act = reply[:, 1:].float()  # position t scores token t+1
        if self.reference is not None:
            ref_logits = self.reference(input_ids=ids, attention_mask=mask, use_cache=False).logits
        else:
            with net.policy.disable_adapter():
                ref_logits = net.policy(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ref_logp = token_logprobs(ref_logits, ids)
        score = self._scores(ids, mask, reply, answers) - p.reward_baseline
        kl_tok = (klmod.k1 if p.kl_estimator == "k1" else klmod.k3)(logp, ref_logp) * act
        if p.value_model == "critic":  # one value per reply: the mean over the prompt
            old_v = self._seq_value(values, mask, reply)
        else:
            old_v = values[:, :-1] * act
        coef = self.kl_ctl.value
        if p.kl_placement == "token":
            rewards = ppo.token_rewards(score, kl_tok, act, coef)
        else:
            rewards = ppo.sequence_reward(score, kl_tok, act, coef)
        if p.advantage == "gae":
            if rewards.dim() == 1:  # a sequence reward at the last reply token
                rewards = ppo.token_rewards(rewards, torch.zeros_like(kl_tok), act, 0.0)
            if old_v.dim() == 1:
                raise RuntimeError("ppo.advantage=gae needs per-token values: ppo.value_model=head")
            adv, returns = ppo.gae(rewards, old_v, act, p.gamma, p.lam)
        else:
            # One scalar per reply: the reward minus the reply's value (a critic's, or the
            # mean of a value head's over the reply); the value's target is that reward.
            r_seq = rewards if rewards.dim() == 1 else (rewards * act).sum(1)
            per_token = old_v.dim() == 2
            v_seq = (old_v * act).sum(1) / act.sum(1).clamp(min=1.0) if per_token else old_v
            adv = (r_seq - v_seq).unsqueeze(1) * act
            returns = r_seq.unsqueeze(1) * act if per_token else r_seq
        if p.whiten_advantages:
            adv = ppo.whiten(adv, act) * act
        return {"ids": ids, "mask": mask, "reply": reply, "act": act, "logp": logp,
                "old_v": old_v, "adv": adv, "returns": returns, "score": score,
                "kl": (klmod.k1(logp, ref_logp) * act).sum(1)}  # fmt: skip

    @staticmethod
    def _seq_value(values, mask, reply) -> torch.Tensor:
        prompt = (mask.bool() & ~reply.bool()).float()
        return (values * prompt).sum(1) / prompt.sum(1).clamp(min=1.0)

    def step(self, lr: float) -> StepWork:
        cfg, p = self.cfg, PPO.of(self.cfg)
        self._seed(0)
        t0 = time.perf_counter()
        # Generation and scoring run in the training precision, as the updates do (an 8-bit
        # base returns activations in the dtype it is given: outside autocast, fp32 ones would
        # reach attention kernels that refuse them).
        with self.strategy.autocast():
            ids, mask, reply, n_reply = self._generate(self.batches.prompts(self.step_index))
        t1 = time.perf_counter()
        with self.strategy.autocast():
            ro = self._score(ids.to(self.device), mask.to(self.device), reply.to(self.device),
                             self._answers(self.batches.rank_group_ids(self.step_index)))  # fmt: skip
        t2 = time.perf_counter()
        ptx_rows = self.batches.best_replies(self.step_index) if p.ptx_coef > 0 else []
        b = ids.shape[0]
        mini = cfg.train.micro_batch_size
        sums = {k: torch.zeros((), device=self.device) for k in
                ("rl/value_loss", "rl/clipfrac", "rl/entropy", "rl/policy_loss")}  # fmt: skip
        total = torch.zeros((), device=self.device)
        updates = 0
        grad_norm = float("nan")
        self.model.train()
        for epoch in range(p.epochs):
            self._seed(1 + epoch)
            order = torch.randperm(b).tolist()
            kls = []
            for start in range(0, b, mini):
                idx = torch.tensor(order[start : start + mini], device=self.device)
                loss, parts = self._ppo_loss(ro, idx, ptx_rows)
                self.strategy.backward(loss, last_micro_batch=True)
                grad_norm = self.strategy.step(lr, cfg.optim.grad_clip)
                n = len(idx)
                total += loss.detach() * n
                for k in sums:
                    sums[k] += parts[k] * n
                kls.append(parts["approx_kl"])
                updates += 1
            if p.target_kl is not None:  # TRL's early stopping, agreed by every rank
                kl_now = torch.stack(kls).mean().reshape(1)
                dist.all_reduce(kl_now)
                if float(kl_now) / self.world > 1.5 * p.target_kl:
                    break
        t3 = time.perf_counter()
        # One all-reduce for what the controller and the counters need from every rank.
        agg = torch.tensor([float(ro["kl"].sum()), float(mask.sum()), float(n_reply)],
                           device=self.device, dtype=torch.float64)  # fmt: skip
        dist.all_reduce(agg)
        n_global = b * self.world
        self.kl_ctl = self.kl_ctl.update(float(agg[0]) / n_global, n_global)
        self._last = {
            "rl/gen_tokens_per_s": float(agg[2]) / self.world / max(t1 - t0, 1e-9),
            "rl/time_generate_s": t1 - t0, "rl/time_score_s": t2 - t1,
            "rl/time_update_s": t3 - t2, "rl/updates": float(updates),
        }  # fmt: skip
        seen = b * updates / math.ceil(b / mini)  # samples through this iteration's updates
        for k in sums:  # per-sample means over this iteration's updates, as sums over b samples
            sums[k] = sums[k] * b / seen
        sums["rl/reward_mean"] = ro["score"].sum().float()
        sums["rl/kl"] = ro["kl"].sum().float()
        return StepWork(total * b / seen, n_global, int(agg[1]), int(agg[1]), grad_norm, sums)

    def _ppo_loss(self, ro, idx, ptx_rows) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = PPO.of(self.cfg)
        ids, mask, act = ro["ids"][idx], ro["mask"][idx], ro["act"][idx]
        with self.strategy.autocast():
            logits, values = self.model(ids, mask)
        logp = token_logprobs(logits, ids)
        pg, clipfrac, approx_kl = ppo.policy_loss(logp, ro["logp"][idx], ro["adv"][idx], act,
                                                  p.cliprange)  # fmt: skip
        if p.value_model == "critic":
            v = self._seq_value(values, mask, ro["reply"][idx])
            vf = ppo.value_loss(v, ro["old_v"][idx], ro["returns"][idx], torch.ones_like(v),
                                p.cliprange_value)  # fmt: skip
        else:
            v = values[:, :-1]
            vf = ppo.value_loss(v, ro["old_v"][idx], ro["returns"][idx], act, p.cliprange_value)
        actor = pg
        if p.ptx_coef > 0:  # ColossalChat: a convex mix with next-token loss on good replies
            rows = [ptx_rows[i] for i in idx.tolist()]
            mb = to_device(collate(rows, self.data.pad_id), self.device)
            n_tok = (mb["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
            with self.strategy.autocast():
                ptx_loss = loss_sum(_unwrapped(self.model).policy, mb) / n_tok
            actor = p.ptx_coef * ptx_loss + (1 - p.ptx_coef) * pg
        ent = ppo.masked_mean(entropy(logits[:, :-1]).detach(), act)
        loss = actor + p.vf_coef * vf
        return loss, {"rl/value_loss": vf.detach(), "rl/clipfrac": clipfrac, "rl/entropy": ent,
                      "rl/policy_loss": pg.detach(), "approx_kl": approx_kl}  # fmt: skip

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """On the held-out prompts: the mean score of the policy's replies and, with a learned
        reward model, its win rate over the starting (SFT) policy's replies to the same prompts
        by that reward model (did PPO help by its own measure? docs/evaluation.md). Both are
        sampled as in training, from the same seed."""
        data = self.data
        if data.groups is None or not len(data.eval):
            return None
        held = self._group_batches_all(data.eval, data.groups[data.eval.rows()])
        prompts = [held.replies(g)[0] for g in range(len(held.groups))]
        from orchestrator.rl.batches import prompt_ids

        groups = list(range(len(prompts)))[self.rank :: self.world]
        mine = [prompt_ids(prompts[g]) for g in groups or [0]]  # a rank with none repeats one
        answers = self._answers([held.group_ids[g] for g in groups or [0]])
        weight = 1.0 if groups else 0.0
        score = self._held_out_scores(mine, answers)
        sums = [weight * float(score.sum()), weight * len(score)]
        if self.reward_model is not None:
            start = self._held_out_scores(mine, answers, starting=True)
            wins = (score > start).float() + 0.5 * (score == start).float()
            sums += [weight * float(start.sum()), weight * float(wins.sum())]
        agg = torch.tensor(sums, device=self.device, dtype=torch.float64)
        dist.all_reduce(agg)
        n = float(agg[1])
        self.eval_metrics = {"rl/eval_reward_mean": float(agg[0]) / n}
        if self.reward_model is not None:
            self.eval_metrics["rl/eval_reward_mean_start"] = float(agg[2]) / n
            self.eval_metrics["eval/reward_win_rate"] = float(agg[3]) / n
            self.eval_metrics["eval/reward_prompts"] = n
        return None

    def _held_out_scores(self, prompts, answers: list[str], starting: bool = False):
        """The reward of replies to `prompts` by the policy, or (`starting`) by the policy it
        started from: the frozen reference, or the policy with its LoRA adapter disabled."""
        self._seed(10_000)  # the same draws (reply length, sampling) for both policies
        net = _unwrapped(self.model)
        engine, off = self.engine, contextlib.nullcontext()
        if starting and self.reference is not None:
            engine = HfEngine(self.reference, self.device)
        elif starting:
            off = net.policy.disable_adapter()
        with self.strategy.autocast(), off:
            ids, mask, reply, _ = self._generate(prompts, engine)
            ids, mask, reply = ids.to(self.device), mask.to(self.device), reply.to(self.device)
            return self._scores(ids, mask, reply, answers).float()

    @torch.no_grad()
    def export(self) -> None:
        """The policy: merged (full, or LoRA with export.merge_lora) or its adapter folder."""
        out = self.export_dir()
        if self.rank == 0:
            policy = _unwrapped(self.model).policy
            mode = export_mode(self.cfg)
            tok = Path(self.data.tokenizer_dir)
            hashed = export_whole(policy, self.cfg, tok, out, self.base_ref, mode)
            if mode == "model":
                if self.n_params <= SAMPLE_MAX_PARAMS:
                    samples = sample_generations(load_export(out), tok, self.cfg)
                else:
                    samples = {"skipped": f"{self.n_params:,} parameters: load {EXPORT}/ on a "
                               "GPU to sample from it"}  # fmt: skip
                (out / "samples.json").write_text(json.dumps(samples, indent=1))
            self.publish_export(out, mode, hashed)
        if dist.is_initialized():
            dist.barrier()

"""PPO: one iteration's time split into generation, scoring and update, and generation tokens/s
with and without the KV cache (in this process, one CPU worker, a small Llama of random weights).

The iteration is the recipe's own arithmetic (rl/models.py PolicyValue, rl/ppo.py): sample
replies to 8 prompts, score them (policy + value, reference, reward model forwards), then 4 PPO
epochs of mini-batches of 4 with a value head, as StackLLaMA's switches set them.
"""

from __future__ import annotations

import time

import torch

IN_PROCESS = True
PROMPTS, PROMPT_LEN, NEW_TOKENS, EPOCHS, MINI = 8, 48, 32, 4, 4


def _model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, max_position_embeddings=512)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _generate(policy, prompts, use_cache: bool) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    with torch.no_grad():
        out = policy.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                              top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                              min_new_tokens=NEW_TOKENS, use_cache=use_cache, pad_token_id=0)  # fmt: skip
    return out, time.perf_counter() - t


def run() -> dict:
    from orchestrator.rl import ppo
    from orchestrator.rl.models import PolicyValue, token_logprobs

    torch.set_num_threads(2)
    policy, reference, reward = _model(0), _model(0), _model(1)
    net = PolicyValue(policy, None, seed=0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    prompts = torch.randint(3, 2048, (PROMPTS, PROMPT_LEN))
    out = {}
    for cache in (True, False):
        _generate(policy, prompts[:2], cache)  # warm-up
        _, s = _generate(policy, prompts, cache)
        out[f"gen_tokens_per_s_{'kv_cache' if cache else 'no_cache'}"] = PROMPTS * NEW_TOKENS / s
    out["kv_cache_speedup"] = out["gen_tokens_per_s_kv_cache"] / out["gen_tokens_per_s_no_cache"]

    torch.manual_seed(2)
    ids, t_gen = _generate(policy, prompts, True)
    mask = torch.ones_like(ids)
    act = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    act[:, PROMPT_LEN - 1 :] = 1.0
    t = time.perf_counter()
    with torch.no_grad():
        logits, values = net(ids, mask)
        logp = token_logprobs(logits, ids)
        ref = token_logprobs(reference(input_ids=ids, attention_mask=mask).logits, ids)
        score = reward(input_ids=ids, attention_mask=mask).logits[:, -1, 0]  # a scalar per reply
        rewards = ppo.token_rewards(score, (logp - ref) * act, act, 0.2)
        adv, ret = ppo.gae(rewards, values[:, :-1] * act, act, 1.0, 0.95)
        adv = ppo.whiten(adv, act) * act
    t_score = time.perf_counter() - t
    t = time.perf_counter()
    net.train()
    for _ in range(EPOCHS):
        for start in range(0, PROMPTS, MINI):
            i = slice(start, start + MINI)
            lg, v = net(ids[i], mask[i])
            pg, _, _ = ppo.policy_loss(token_logprobs(lg, ids[i]), logp[i], adv[i], act[i], 0.2)
            vf = ppo.value_loss(v[:, :-1], values[i, :-1] * act[i], ret[i], act[i], 0.2)
            (pg + 0.1 * vf).backward()
            opt.step()
            opt.zero_grad()
    t_update = time.perf_counter() - t
    total = t_gen + t_score + t_update
    out.update({
        "iteration_s": total,
        "share_generate": t_gen / total, "share_score": t_score / total,
        "share_update": t_update / total,
        "setup": f"{PROMPTS} prompts x {PROMPT_LEN} tokens, {NEW_TOKENS} sampled tokens, "
                 f"{EPOCHS} epochs of mini-batches of {MINI}; Llama 4 x 256, 2 threads",
    })  # fmt: skip
    return out

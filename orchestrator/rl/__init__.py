"""Preference and RL stages: reward models, DPO and PPO (docs/rl.md).

- losses.py: pairwise and OpenAssistant K-wise reward losses, rank metrics, DPO/cDPO.
- kl.py: adaptive (Ziegler) and fixed KL controllers, k1/k3 estimators.
- ppo.py: PPO's arithmetic (token/sequence rewards, GAE, whitening, clipped losses).
- models.py: ScoreModel (a scalar head per position), PolicyValue (policy + value head/critic).
- batches.py: deterministic steps of ranked groups (or their prompts) per rank.
- recipes.py: RewardObjective, DpoObjective, PpoObjective: their batches, models, step,
  evaluation and export behind the trainer's objective interface (training/objective.py).
- grpo.py: GrpoObjective; rewards.py, rollout.py: verifiable rewards, rollout engines.
"""

"""Preference and RL stages (reward models, DPO, PPO): losses, controllers and data shapes.

What is here so far: the objectives as pure functions checked against their formulas, the KL
controllers, and preference data (`data/preference.py`). The multi-stage pipeline, the stages'
training loops and their recipes are not built yet (issue: preference and RL stages).
"""

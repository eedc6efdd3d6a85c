"""train.objective=sft: next-token loss on conversations or text (training/loop.py)."""

from __future__ import annotations

from orchestrator.objectives.spec import ObjectiveSpec

SPEC = ObjectiveSpec(
    name="sft",
    data_kinds=("sft",),
    recipe="orchestrator.training.sft:SftObjective",
    summary="next-token loss (fine-tuning, pretraining)",
    work=None,
    elastic=True,
)

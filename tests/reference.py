"""Per-step losses recorded before a refactor, checked after it.

A change that only moves code (the trainer split into parts, objectives behind specs) must not
change what a run computes. `check_reference(name, losses)` compares a run's per-step losses with
the values recorded in `tests/assets/reference_losses.json` on this kind of machine (same torch,
same CPU kernels: the fingerprint is recorded with them), within `REL_TOLERANCE`. On another kind
of machine the float results may legitimately differ in the last bits (another SIMD width
reorders reductions), so the comparison is left out there and the reason printed.

Record (or re-record, when a change is *meant* to change the numbers, saying so in the commit):

    ORCHESTRATOR_RECORD_REFERENCE=1 .venv/bin/python -m pytest -m integration \
        tests/integration/test_rl_stages.py -k "stack_llama_pipeline or preference_stage"
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

FILE = Path(__file__).parent / "assets" / "reference_losses.json"

REL_TOLERANCE = 1e-4
"""The same computation in another order of float operations (a moved reduction, a fused
call) differs by ~1e-7 relative per op in fp32; a real change to the objective, data order or
optimizer moves a loss by far more than 1e-4 within a few steps."""


def fingerprint() -> dict[str, str]:
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def check_reference(name: str, losses: dict[int, float]) -> str | None:
    """Compare (or, with ORCHESTRATOR_RECORD_REFERENCE=1, record) `losses` under `name`.
    Returns why nothing was compared (None when compared or recorded).

    Raises:
        AssertionError: a step missing, or a loss outside the tolerance.
    """
    data = json.loads(FILE.read_text()) if FILE.exists() else {"runs": {}}
    if os.environ.get("ORCHESTRATOR_RECORD_REFERENCE") == "1":
        if data.get("fingerprint") not in (None, fingerprint()):
            data = {"runs": {}}  # another kind of machine: start over
        data["fingerprint"] = fingerprint()
        data["runs"][name] = {str(k): v for k, v in sorted(losses.items())}
        FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return None
    if name not in data["runs"]:
        return f"no reference recorded for {name}"
    if data.get("fingerprint") != fingerprint():
        why = f"reference losses recorded on {data.get('fingerprint')}, this is {fingerprint()}"
        print(f"{name}: {why}: not compared")
        return why
    want = {int(k): v for k, v in data["runs"][name].items()}
    assert sorted(losses) == sorted(want), (name, sorted(losses), sorted(want))
    for step, value in want.items():
        got = losses[step]
        assert abs(got - value) <= REL_TOLERANCE * max(1.0, abs(value)), (name, step, got, value)
    return None

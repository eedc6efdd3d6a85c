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


KERNEL_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                "avx_vnni")  # fmt: skip
"""CPU extensions that can select other kernels (oneDNN, bitsandbytes' int8 CPU path) at the same
`cpu_capability`. On 2026-12-07 an AVX512 machine with all of them computed StackLLaMA's PPO
step-1 loss 1% away from the values recorded the day before on an AVX512 machine with the same
code and pins, whose extensions were not recorded; the references were recorded again from the
pre-refactor commit (24a9e15) on the new machine. Machines that differ in any are not compared."""


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    return sorted(set(flags) & set(KERNEL_FLAGS))


def fingerprint() -> dict[str, object]:
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kernel_flags": _cpu_flags(),
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

"""The IsoFLOP sweep of bench/isoflop.py with one batch size (16 sequences) for every model size,
so that only N and D change (slow, ~12 min).

    .venv/bin/python bench/run.py isoflop_fixed_batch
"""

from __future__ import annotations


def run() -> dict:
    from bench.isoflop import sweep

    return sweep(batch_sequences=16)

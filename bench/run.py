"""The benchmark harness: `python bench/run.py [NAME ...]` runs benchmarks and records them.

Every `bench/<name>.py` (not starting with `_`) is one benchmark: a module with a `run() -> dict`
function. The harness runs the ones named (all of them by default), writes each result to
`bench/results/<name>.json` with when and where it was measured, and rebuilds
`bench/results/RESULTS.md` from every result file. A module may set `IN_PROCESS = True` when it
drives torch.distributed in this process (those run first, before any benchmark starts Ray).

    make bench                                  # every benchmark
    .venv/bin/python bench/run.py loop batching # some of them
    .venv/bin/python bench/run.py --list

Benchmarks measure; they never assert a time. Ratios against a baseline measured in the same run
are what count on a noisy machine.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # `bench.*`, `orchestrator.*` and `tests.*` import


def available() -> list[str]:
    return sorted(
        p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_") and p.stem != "run"
    )


def main(argv: list[str]) -> None:
    from bench._results import write, write_table

    if argv == ["--list"]:
        for name in available():
            doc = (importlib.import_module(f"bench.{name}").__doc__ or "").strip()
            print(f"{name:22s} {doc.splitlines()[0] if doc else ''}")
        return
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {available()}")
    modules = {n: importlib.import_module(f"bench.{n}") for n in names}
    # In-process torch.distributed first, before Ray owns this process.
    order = sorted(names, key=lambda n: not getattr(modules[n], "IN_PROCESS", False))
    for name in order:
        print(f"=== bench {name}", flush=True)
        write(name, modules[name].run())
    write_table()


if __name__ == "__main__":
    main(sys.argv[1:])

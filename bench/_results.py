"""Benchmark results: one JSON per benchmark in bench/results/, and RESULTS.md built from all of
them (every file keeps its own history in git)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write(name: str, payload: dict) -> dict:
    """bench/results/<name>.json: the payload with when and where it was measured."""
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        **payload,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))
    return payload


def write_table() -> None:
    rows = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py). Ratios matter; this machine is noisy.",
        "",
    ]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        rows += [
            f"## {r['bench']} ({r['when']}, {r['machine']})",
            "",
        ]
        if "strategies" in r:
            rows += [
                "| strategy | tokens/s | peak RSS per worker (MB) | checkpoint MB | save s |",
                "|---|---|---|---|---|",
            ]
            rows += [
                f"| {n} | {v['tokens_per_s']} | {v['peak_rss_mb_per_worker']} | {v['checkpoint_mb']} "
                f"| {v['checkpoint_save_s']} |"
                for n, v in r["strategies"].items()
            ]
            rows.append("")
            continue
        if "modes" in r:
            keys = list(next(iter(r["modes"].values())))
            rows += ["| mode | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            rows += [
                f"| {name} | " + " | ".join(str(v.get(k, "")) for k in keys) + " |"
                for name, v in r["modes"].items()
            ]
            rows.append("")
            r = {k: v for k, v in r.items() if k != "modes"}
        if "pass_slots_per_s" in r:
            rates = r.pop("pass_slots_per_s")
            rows += ["| pass (rows x width) | forward+backward slots/s |", "|---|---|"]
            rows += [f"| {k} | {v} |" for k, v in rates.items()]
            rows.append("")
        if "interruptions" in r:
            keys = list(r["interruptions"][0])
            rows += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            rows += ["| " + " | ".join(str(i[k]) for k in keys) + " |" for i in r["interruptions"]]
            rows.append("")
        rows += ["| metric | value |", "|---|---|"]
        rows += [
            f"| {k} | {v} |"
            for k, v in r.items()
            if k not in ("bench", "when", "machine", "interruptions")
        ]
        rows.append("")
    (RESULTS / "RESULTS.md").write_text("\n".join(rows))

"""Run a script as the ranks of a gloo process group, without Ray: each rank a subprocess,
`script` reading (rank, *args) from argv and printing one `REPORT <json>` line."""

from __future__ import annotations

import json
import subprocess
import sys


def run_ranks(script: str, world: int, args: list[str], timeout_s: float = 300) -> list[dict]:
    """Every rank's report, in rank order; a rank that fails fails the caller with its stderr."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(r), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(world)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, err[-4000:]
        reports.append(json.loads(next(x for x in out.splitlines() if x.startswith("REPORT "))[7:]))
    return reports

"""Run a script as the ranks of a gloo process group, without Ray: each rank a subprocess,
`script` reading (rank, *args) from argv and printing one `REPORT <json>` line."""

from __future__ import annotations

import json
import subprocess
import sys

EXIT = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"
"""Appended to every script: once it has reported (and torn its process group down), the rank
leaves without running C++ destructors. A gloo thread still joinable then aborted ranks at
exit in CI ("terminate called without an active exception", SIGABRT) after a good report."""


def run_ranks(script: str, world: int, args: list[str], timeout_s: float = 300) -> list[dict]:
    """Every rank's report, in rank order; a rank that fails fails the caller with its stderr."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script + EXIT, str(r), *args],
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

"""The Makefile's user values, read from the environment, never from a shell command line.

`make launch job=vicuna run=x set="..."` exports each user value as `ORCH_<name>` (the Makefile
escapes `$` and `#` and unexports the originals), and its recipes run
`python -m orchestrator make <target>`; `make_argv` turns those variables into the command
line of `python -m orchestrator`. A run name holding `; rm -rf ~` or an override holding
`$(...)` stays a string all the way: it is then refused by name and config checks, not run.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.config.errors import ConfigError

TARGETS = (
    "launch", "eval", "estimate", "preflight", "plan",
    "cluster-up", "cluster-down", "cluster-status", "logs", "stop",
)  # fmt: skip


def make_argv(target: str, env: Mapping[str, str]) -> list[str]:
    """argv for `python -m orchestrator` from the Makefile's ORCH_* variables."""

    def get(name: str) -> str:
        return env.get(f"ORCH_{name}", "").strip()

    def need(name: str, example: str) -> str:
        value = get(name)
        if not value:
            raise ConfigError(f"make {target}: {name}= is required, e.g. {name}={example}")
        return value

    def opt(flag: str, name: str) -> list[str]:
        return [flag, get(name)] if get(name) else []

    overrides = " ".join(
        x for x in (get("set"), f"variant={get('variant')}" if get("variant") else "") if x
    )
    sets = ["--set", overrides] if overrides else []
    if target == "launch":
        return (
            ["launch", get("job") or "vicuna"] + opt("--scale", "scale") + opt("--run", "run")
            + sets + (["--yes"] if get("yes") else []) + opt("--cluster", "cluster")
            + opt("--stage", "stage") + opt("--fresh", "fresh")
        )  # fmt: skip
    if target == "eval":
        return (
            ["eval", need("job", "vicuna")] + opt("--run", "run") + opt("--model", "model")
            + opt("--scale", "scale") + sets + (["--yes"] if get("yes") else [])
        )  # fmt: skip
    if target == "estimate":
        return (
            ["estimate", get("job") or "vicuna"] + opt("--scale", "scale") + sets
            + (["--json"] if get("json") else [])
        )  # fmt: skip
    if target == "preflight":
        cluster = need("cluster", "aws-spot")
        return (
            ["preflight", get("job") or "vicuna", "--cluster", cluster]
            + opt("--scale", "scale")
            + sets
        )
    if target == "plan":
        return (
            ["plan", "--gpu", get("gpu") or "A100-80GB"] + opt("--usd", "budget_usd")
            + opt("--flops", "flops") + opt("--gpu-hours", "gpu_hours")
            + opt("--variant", "variant") + (["--json"] if get("json") else [])
        )  # fmt: skip
    if target in ("cluster-up", "cluster-down", "cluster-status"):
        return ["cluster", target.removeprefix("cluster-"), need("cluster", "aws-spot")]
    if target in ("logs", "stop"):
        argv = ["cluster", target, need("cluster", "aws-spot"), "--id", need("id", "raysubmit_XYZ")]
        return argv + (["--follow"] if target == "logs" and get("follow") else [])
    raise ConfigError(f"make: unknown target {target!r}; known: {list(TARGETS)}")

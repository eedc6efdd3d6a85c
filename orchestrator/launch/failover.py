"""Equivalent hardware to fail over to when a job's own has no capacity (`hardware.alternatives`).

A hardware block may list other blocks of conf/hardware, in preference order, that can run the
same job: e.g. 8 x A100-80GB (p4de.24xlarge) -> 8 x A100-40GB (p4d.24xlarge). Each alternative
is the job's config with that block's machine (accelerator, workers, GPUs and CPUs per worker,
nodes, instance type) and the job's own market, waits and fallback, at the largest micro-batch
the GPU memory fit check allows (at most the job's own: the global batch, hence the training,
is the same; gradient accumulation makes up the difference). The catalog prices each one
(`make estimate` prints them), the fit check validates each (one that no micro-batch fits is
kept out, with the reason), and tests/unit/test_infra.py checks the cluster file declares a
node type for each, in every market.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.compose.load import from_dict, to_dict
from orchestrator.config.names import check_name
from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.memo import Memo
from orchestrator.paths import CONF_DIR

MACHINE = ("accelerator", "num_workers", "cpus_per_worker", "gpus_per_worker", "num_nodes",
           "instance_type")  # fmt: skip
"""What an alternative replaces; the rest of `hardware` (market, waits, fallback, head) stays."""


def _block(name: str, where: str) -> dict[str, Any]:
    check_name("hardware block", name)
    path = CONF_DIR / "hardware" / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
        raise ConfigError(f"{where}: no hardware block {name!r} in conf/hardware; have {have}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a hardware block must be a mapping")
    return data


@dataclass(frozen=True)
class Alternative:
    name: str
    cfg: JobConfig | None
    """The job on it; None when it does not fit there at any micro-batch (`why`)."""
    why: str = ""


def alternatives(cfg: JobConfig) -> list[Alternative]:
    """The job on each of `hardware.alternatives`, in order. One on which the job fits at no
    micro-batch (a 13B evaluation's weights and KV cache on 40 GB cards) is kept with the
    reason and never launched. A launch asks several times (its plan, the capacity wait, a
    fail-over): each answer is kept by what it was made of (the job's config and the blocks'
    text), and every caller gets its own copy to change.

    Raises:
        ConfigError: an unknown block, naming it.
    """
    where = f"{cfg.job} ({cfg.scale}): hardware.alternatives"
    blocks = {name: _block(name, f"{where} {name!r}") for name in cfg.hardware.alternatives}
    return _KNOWN.get(repr((cfg, blocks)), lambda: _alternatives(cfg, blocks))


_KNOWN: Memo[list[Alternative]] = Memo(16)


def _alternatives(cfg: JobConfig, blocks: dict[str, dict[str, Any]]) -> list[Alternative]:
    from orchestrator.cost.memory import check_job

    out = []
    base = to_dict(cfg)
    for name, block in blocks.items():
        data = {**base, "hardware": {**base["hardware"], "alternatives": []}}
        data["hardware"].update({k: block[k] for k in MACHINE if k in block})
        why = ""
        for micro in range(cfg.train.micro_batch_size, 0, -1):
            data["train"] = {**base["train"], "micro_batch_size": micro}
            try:
                alt = from_dict(data)
                check_job(alt)
            except ConfigError as e:
                why = str(e)
                continue
            out.append(Alternative(name, alt))
            break
        else:
            out.append(Alternative(name, None, f"fits at no micro-batch size: {why}"))
    return out


def summary(name: str, alt: JobConfig, usd: float, hours: float) -> str:
    """One line of `make estimate`."""
    hw = alt.hardware
    return (f"  alternative {name}: {hw.num_workers} x {hw.accelerator} ({hw.instance_type}), "
            f"micro-batch {alt.train.micro_batch_size}: {hours:,.1f} h, ${usd:,.0f} "
            f"{hw.market}")  # fmt: skip

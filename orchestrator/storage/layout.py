"""The run's records and artifact names (orchestrator/contract/records.py, re-exported here for
the stores and their users), and what reading them back needs a store for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.contract.records import (  # noqa: F401 - re-exported
    ARTIFACTS,
    BILL_JSON,
    BILL_MD,
    CHECKPOINTS,
    CKPT_CACHE,
    CKPT_STAGING,
    CONFIGS,
    DATA,
    DATA_CACHE,
    DPO_REFERENCE,
    EVENTS,
    EXPORT,
    EXPORT_STAGING,
    EXTRA_COSTS,
    FAILURES,
    LAUNCH_RESULT,
    LEDGER,
    METRICS_JOURNAL,
    METRICS_PENDING,
    METRICS_TAIL,
    RAY_STORAGE,
    RESULT,
    RESUMES,
    RUN_META,
    S3_CACHE,
    TIMELINE,
    Artifact,
    EventRecord,
    FailureRecord,
    Place,
    RunContext,
    RunMeta,
    RunResult,
    RunStorage,
    Spend,
    StopReason,
    TimelineRecord,
    _from_dict,  # noqa: F401 - re-exported
    default_scratch,
    parse_lines,
    to_line,
)


def run_store(storage: RunStorage):
    """The run's folder in the durable store."""
    from orchestrator.storage.durable import open_durable

    return open_durable(storage.run_url)


def read_failures(where: Any) -> list[FailureRecord]:
    """The failures of a run so far, from its durable store (or a run folder path)."""
    from orchestrator.storage.durable import FolderStore

    store = FolderStore(where) if isinstance(where, str | Path) else where
    out = []
    for line in store.read_lines(FAILURES):
        try:
            out.append(FailureRecord.from_json(line))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return out

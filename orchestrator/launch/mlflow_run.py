"""The MLflow side of one launch: start (or continue) the run, and finish it with the bill as
tags and the export as a logged model."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from orchestrator.compose.load import to_yaml
from orchestrator.config.schema import JobConfig
from orchestrator.storage.layout import EXPORT, RUN_META, RunMeta, RunResult
from orchestrator.tracking import runs as mlruns


def config_hash(cfg: JobConfig) -> str:
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def start_run(
    cfg: JobConfig, uri: str, run_name: str, meta: RunMeta | None, parent: str | None = None
) -> str:
    """Start (or continue) the run's MLflow run; `parent`: the pipeline's run (a stage is its
    child run)."""
    nested = {"mlflow.parentRunId": parent} if parent else {}
    return mlruns.start_or_continue(
        uri,
        cfg.tracking.experiment or cfg.job,
        run_name,
        meta.mlflow_run_id if meta else None,
        tags={
            "job": cfg.job,
            "scale": cfg.scale,
            "strategy": cfg.train.strategy,
            "method": cfg.train.method,
            "instance_type": cfg.hardware.instance_type,
            "market": cfg.hardware.market,
            "git_commit": mlruns.git_commit(),
            "cluster": os.environ.get("RAY_ADDRESS", "local"),
            "mlflow.note.content": cfg.description,
            **nested,
        },
    )


def bill_tags(bill: dict[str, Any], attempt: dict[str, Any], result: RunResult | None) -> dict:
    tags = {
        "stop_reason": bill["stop_reason"],
        "attempts": str(attempt["attempt"]),
        "bill_usd": f"{bill['usd_total']:.6f}",
        "bill_usd_wasted": f"{bill['by_category']['wasted']:.6f}",
        "bill_usd_projected": f"{bill['projected']['usd']:.6f}",
        "bill_error_pct": f"{bill['projected']['error_pct']:.1f}",
        "bill_spot_savings_usd": f"{bill['usd_spot_savings']:.6f}",
        "final_step": str(result.step) if result else "",
    }
    if "market_fallback" in bill:
        tags["market_fallback"] = bill["market_fallback"]
    if (bill.get("scale_down_tail") or {}).get("nodes"):  # nodes left up after the launch
        tags["bill_usd_scale_down_tail"] = f"{bill['scale_down_tail']['usd']:.6f}"
    if bill.get("capacity_waits"):  # each wait for capacity, priced
        tags["capacity_waits"] = " | ".join(bill["capacity_waits"])[-4000:]
    if bill.get("elastic"):  # the capacity decisions of an elastic run, newest last
        tags["elastic_decisions"] = " | ".join(bill["elastic"])[-4000:]
    return tags


def export_digest(store) -> str | None:
    """The digest of a run's export (its model manifest's file table), or None without one."""
    from orchestrator.checkpoint.exports import MODEL_MANIFEST, model_digest, parse_model_manifest

    for rel in (f"{EXPORT}/{MODEL_MANIFEST}", f"{EXPORT}/adapter/{MODEL_MANIFEST}"):
        text = store.read_text(rel)
        if text:
            return model_digest(parse_model_manifest(text, f"{store.url}/{rel}"))
    return None


def register_export(
    cfg: JobConfig, uri: str, run_id: str, run_name: str, store, bill: dict, result
) -> None:
    """A finished run's export as an MLflow logged model, by reference, with its bill."""
    exported = store.exists(f"{EXPORT}/config.json") or store.exists(
        f"{EXPORT}/adapter/adapter_config.json"
    )
    if result is None or not exported:
        return
    tags = {
        "job": cfg.job,
        "scale": cfg.scale,
        "bill_usd": f"{bill['usd_total']:.6f}",
        "bill_usd_projected": f"{bill['projected']['usd']:.6f}",
        "bill_usd_wasted_by_preemptions": f"{bill['by_category']['wasted']:.6f}",
        "bill_spot_savings_usd": f"{bill['usd_spot_savings']:.6f}",
        "bill_usd_upstream": "0",  # a pipeline stage adds its inputs' bills here
        "tokens": str(result.tokens),
        "eval_loss": "" if result.eval_loss is None else f"{result.eval_loss:.6f}",
        "export_digest": export_digest(store) or "",
    }
    params = {
        "data_key": RunMeta.from_json(store.read_text(RUN_META) or "{}").data_key or "",
        "config_hash": config_hash(cfg),
        "method": cfg.train.method,
        "base": cfg.model.pretrained or "random init",
    }
    model_id = mlruns.register_model(
        uri, run_id, f"{cfg.job}-{run_name}", f"{store.url}/{EXPORT}", tags, params
    )
    print(f"  registered the export in MLflow as logged model {model_id}")

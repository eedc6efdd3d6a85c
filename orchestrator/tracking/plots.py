"""Plots and files a person looks at in MLflow: loss vs step, loss vs dollars, the checkpoint
manifest and sample generations (logged by the launcher at the end of every launch)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def loss_and_cost_plots(tracking_uri: str, run_id: str, out_dir: Path) -> list[Path]:
    """loss_vs_step.png and loss_vs_usd.png from the run's metric history (all launches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    loss = {m.step: m.value for m in c.get_metric_history(run_id, "loss")}
    usd = {m.step: m.value for m in c.get_metric_history(run_id, "cost/usd_total")}
    evals = {m.step: m.value for m in c.get_metric_history(run_id, "eval_loss")}
    if not loss:
        return []
    steps = sorted(loss)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [loss[s] for s in steps], label="train loss")
    if evals:
        ax.scatter(
            sorted(evals),
            [evals[s] for s in sorted(evals)],
            color="C3",
            zorder=3,
            label="eval loss",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss vs step")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "loss_vs_step.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    both = [s for s in steps if s in usd]
    if both:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([usd[s] for s in both], [loss[s] for s in both], color="C2")
        ax.set_xlabel("dollars spent (cumulative)")
        ax.set_ylabel("loss")
        ax.set_title("Loss vs dollars")
        fig.tight_layout()
        paths.append(out_dir / "loss_vs_usd.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def log_run_artifacts(tracking_uri: str, run_id: str, store, checkpoint_url: str) -> None:
    """Loss/cost plots, the manifest of the latest complete checkpoint, sample generations
    (`store`: the run's folder in the durable store)."""
    from orchestrator.checkpoint.store import open_store
    from orchestrator.tracking.runs import client

    c = client(tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        for p in loss_and_cost_plots(tracking_uri, run_id, Path(d)):
            c.log_artifact(run_id, str(p), "plots")
        try:
            ckpts = open_store(str(checkpoint_url))
            steps = ckpts.complete_steps()
            if steps:
                manifest = ckpts.read_manifest(steps[0])
                c.log_text(run_id, json.dumps(manifest, indent=1), "checkpoint/manifest.json")
        except Exception as e:  # noqa: BLE001 - the manifest artifact is a convenience
            print(f"warning: no checkpoint manifest artifact: {e}")
    samples = store.read_text("export/samples.json")
    if samples is not None:
        rows = json.loads(samples)
        if isinstance(rows, dict):  # {"skipped": why}: a model too large to sample on export
            c.set_tag(run_id, "samples", str(rows.get("skipped", "skipped"))[:500])
        else:
            c.log_table(
                run_id,
                {
                    "prompt": [r["prompt"] for r in rows],
                    "completion": [r["completion"] for r in rows],
                },
                "samples/samples.json",
            )

"""`make bills`: every recipe's projected full-scale bill, next to the actual bills of its runs.

Writes bills.md, bills.json, bills.png (a bar chart) and quality.png (MT-bench score against
dollars: the originals' published scores and this project's evaluated runs, each with its
judge), and logs them to the MLflow experiment `bills` so all recipes' bills are one click away
in the UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.compose.load import JOBS_DIR, job_configs
from orchestrator.cost.estimator import project
from orchestrator.objectives import spec as objective_spec


def projected_bills() -> list[dict[str, Any]]:
    """Per recipe: our run's projected full-scale bill (the headline), the replay of the
    original run, and the original's published figures where docs/facts has them."""
    rows = []
    configs = [
        (f"{job}:{stage}" if stage else job, cfg)
        for job in sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))
        for stage, cfg in job_configs(job, "full").items()  # a pipeline: a row per stage
    ]
    for job, cfg in configs:
        trains = objective_spec(cfg.train.objective).trains  # an eval stage bought no score
        p = project(cfg)
        r = project(cfg, replay=True)
        low, high = p.usd_range
        lengths = p.assumptions.get("lengths") or {}
        rows.append(
            {
                "job": job,
                "model_params_b": p.n_params / 1e9,
                "gpus": f"{p.num_gpus} x {cfg.hardware.accelerator}",
                "instance_type": p.instance_type,
                "market": p.market,
                "tokens_b": p.tokens / 1e9,
                "lengths": lengths.get("kind", "packed rows"),
                "mfu": p.mfu,
                "hfu": p.hfu,
                "hours": p.hours,
                "hours_low": p.hours_low,
                "hours_high": p.hours_high,
                "usd": p.usd,
                "usd_low": low,
                "usd_high": high,
                "usd_on_demand": p.usd_on_demand,
                "usd_spot": p.usd_spot,
                "usd_spot_low": p.usd_spot_low,
                "usd_spot_high": p.usd_spot_high,
                "replay_hours": r.hours,
                "replay_usd": r.usd,
                "replay_slots_per_token": r.slots / max(1.0, r.tokens),
                "published_hours": cfg.replay.published_hours,
                "published_usd": cfg.replay.published_usd,
                "published_source": cfg.replay.published_source,
                "published_mt_bench": cfg.replay.published_mt_bench if trains else None,
                "published_mt_bench_model": cfg.replay.published_mt_bench_model,
            }
        )
    return rows


def actual_bills(tracking_uri: str, jobs: list[str]) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = []
    for job in jobs:
        exp = client.get_experiment_by_name(job)
        if exp is None:
            continue
        for run in client.search_runs(
            [exp.experiment_id], filter_string="tags.bill_usd != ''", max_results=200
        ):
            t = run.data.tags
            rows.append(
                {
                    "job": job,
                    "run": run.info.run_name,
                    "scale": t.get("scale"),
                    "usd": float(t["bill_usd"]),
                    "usd_projected": float(t.get("bill_usd_projected", "nan")),
                    "error_pct": float(t.get("bill_error_pct", "nan")),
                    "stop_reason": t.get("stop_reason"),
                    "attempts": t.get("attempts"),
                }
            )
    return rows


def evaluated_runs(tracking_uri: str, jobs: list[str]) -> list[dict[str, Any]]:
    """Runs with a judged score (an eval stage or `make eval`): the score, its judge, and what
    the evaluated model cost: the training bill of the export it evaluated (its logged model's
    bill, upstream stages included) plus the evaluation's own."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = []
    for job in jobs:
        exp = client.get_experiment_by_name(job.split(":")[0])
        if exp is None:
            continue
        for run in client.search_runs(
            [exp.experiment_id], filter_string="metrics.`eval/mt_bench_score` >= 0",
            max_results=200,
        ):  # fmt: skip
            t, m = run.data.tags, run.data.metrics
            trained = 0.0
            if t.get("eval.model_id"):
                try:
                    mt = client.get_logged_model(t["eval.model_id"]).tags
                    trained = float(mt.get("bill_usd", 0)) + float(mt.get("bill_usd_upstream", 0))
                except Exception:  # noqa: BLE001 - a deleted model: its training cost unknown
                    trained = float("nan")
            rows.append({
                "job": job.split(":")[0], "run": run.info.run_name, "scale": t.get("scale"),
                "score": m["eval/mt_bench_score"], "judge": t.get("eval.judge", "?"),
                "usd_eval": float(t.get("bill_usd", 0)), "usd_trained": trained,
                "usd": trained + float(t.get("bill_usd", 0)),
                "base_score": m.get("eval/base_mt_bench_score"),
                "gain": m.get("eval/gain_over_base"),
                "usd_per_point": m.get("eval/usd_per_point"),
                "pair_win_rate_adjusted": m.get("eval/pair_win_rate_adjusted"),
            })  # fmt: skip
    return list({r["run"]: r for r in rows}.values())


def _markdown(proj: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    lines = [
        "# Bills",
        "",
        "## Projected full-scale bills (make estimate job=X for details)",
        "",
        "Ours: this orchestrator's run (its batching, kernels, strategy and checkpoints), in the "
        "job's market, with the range of the kernel model. Replay: the original run as it was "
        "(`make estimate job=X` prints both). Published: the original's own figure, where "
        "docs/facts/originals.md has one. Token lengths are measured, published or assumed "
        "(docs/COST_MODEL.md).",
        "",
        "| job | model | GPUs | tokens (lengths) | MFU / HFU | ours: hours | ours: bill (range) "
        "| replay: hours, bill | published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proj:
        published = "-"
        if r["published_hours"]:
            usd = f", ${r['published_usd']:,.0f}" if r["published_usd"] else ""
            published = f"{r['published_hours']:,.0f} h{usd}"
        lines.append(
            f"| {r['job']} | {r['model_params_b']:.1f}B | {r['gpus']} | {r['tokens_b']:.2f}B "
            f"({r['lengths']}) | {r['mfu']:.0%} / {r['hfu']:.0%} | {r['hours']:,.1f} "
            f"({r['hours_low']:,.1f}-{r['hours_high']:,.1f}) | ${r['usd']:,.0f} "
            f"(${r['usd_low']:,.0f}-${r['usd_high']:,.0f}) {r['market']} | "
            f"{r['replay_hours']:,.1f} h, ${r['replay_usd']:,.0f} | {published} |"
        )
    lines += ["", "## Actual bills of runs in MLflow", ""]
    if not actual:
        lines.append("No finished runs yet.")
    else:
        lines += [
            "| job | run | scale | actual | projected | error | stop reason | launches |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['job']} | {r['run']} | {r['scale']} | ${r['usd']:.6f} | ${r['usd_projected']:.6f} | "
            f"{r['error_pct']:+.1f}% | {r['stop_reason']} | {r['attempts']} |"
            for r in actual
        ]
    return "\n".join(lines) + "\n"


def _quality_markdown(proj: list[dict[str, Any]], evaluated: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Quality next to the bill", "",
             "Published: the released model's MT-bench (GPT-4 judge, LMSYS leaderboard of "
             "2023-06-22; docs/facts/mt_bench.md) next to our projected bill of the recipe. "
             "Evaluated: this project's runs with a judged score; scores compare only under the "
             "same judge.", "",
             "| job | released model | MT-bench (published) | ours: projected bill |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['job']} | {r['published_mt_bench_model']} | {r['published_mt_bench']:.2f} | "
              f"${r['usd']:,.0f} |" for r in proj if r.get("published_mt_bench")]  # fmt: skip
    if evaluated:
        lines += ["", "Base: the model it was trained from, graded by the same judge in the same "
                  "run; $/point: the training bill over the gain (a gain of 0 or less buys no "
                  "point); vs base: the adjusted pairwise win rate against the base's answers.",
                  "", "| job | run | scale | score | base | gain | $/point | vs base | judge "
                  "| trained | evaluation | total |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['job']} | {r['run']} | {r['scale']} | {r['score']:.2f} | "
                  f"{_num(r.get('base_score'), '{:.2f}')} | {_num(r.get('gain'), '{:+.2f}')} | "
                  f"{_num(r.get('usd_per_point'), '${:,.6f}')} | "
                  f"{_num(r.get('pair_win_rate_adjusted'), '{:.0%}')} | {r['judge']} | "
                  f"${r['usd_trained']:.6f} | ${r['usd_eval']:.6f} | ${r['usd']:.6f} |"
                  for r in evaluated]  # fmt: skip
    return lines


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _quality_chart(proj: list[dict[str, Any]], evaluated: list[dict[str, Any]], path: Path) -> None:
    """Score against dollars: published originals as reference points (at our projected bill
    of the recipe), this project's evaluated runs, each labelled with its judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pub = [r for r in proj if r.get("published_mt_bench")]
    ax.scatter([r["usd"] for r in pub], [r["published_mt_bench"] for r in pub], marker="s",
               facecolors="none", edgecolors="tab:blue",
               label="published (GPT-4 judge) at our projected bill")  # fmt: skip
    labels = [(r["published_mt_bench_model"].replace(",", " ").split(" ")[0],
               (r["usd"], r["published_mt_bench"])) for r in sorted(pub, key=lambda r: r["usd"])]  # fmt: skip
    for judge in sorted({r["judge"] for r in evaluated}):
        mine = [r for r in evaluated if r["judge"] == judge and r["usd"] == r["usd"]]
        ax.scatter([max(r["usd"], 1e-6) for r in mine], [r["score"] for r in mine],
                   label=f"ours, judged by {judge}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("USD (log scale)")
    ax.set_ylabel("MT-bench score (1-10)")
    ax.set_ylim(0, 10.5)
    ax.set_title("What the bill bought: quality per dollar (compare within one judge)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _place_labels(ax, labels)
    fig.savefig(path, dpi=120)
    plt.close(fig)


LABEL_OFFSETS = ((0, 9), (0, -15), (7, -3), (-7, -3), (8, 14), (-8, 14), (8, -20), (-8, -20))
"""Where a point's label may go, in points from it: the first that stays inside the axes and
clear of the labels placed before it wins."""


def _place_labels(ax: Any, labels: list[tuple[str, tuple[float, float]]]) -> None:
    """Each (text, point) annotated at the first of LABEL_OFFSETS where it stays inside the
    axes and covers no other point and no label already placed; where none is clear, at the
    one inside the axes that covers least."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    r = 5 * ax.figure.dpi / 72  # a marker's half-width in pixels
    marks = [ax.transData.transform(xy) for _, xy in labels]
    placed: list[Any] = [Bbox([[x - r, y - r], [x + r, y + r]]) for x, y in marks]

    def covered(ext: Any, others: list[Any]) -> float:
        inter = [Bbox.intersection(ext, o) for o in others]
        return sum(b.width * b.height for b in inter if b is not None)

    for i, (text, xy) in enumerate(labels):
        others = placed[:i] + placed[i + 1 :]  # its own marker aside
        best: tuple[float, Any] | None = None
        for dx, dy in LABEL_OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            note = ax.annotate(text, xy, fontsize=7, xytext=(dx, dy), textcoords="offset points",
                               ha=ha)  # fmt: skip
            ext = note.get_window_extent(renderer)
            inside = box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1
            cost = covered(ext, others) + (0.0 if inside else float("inf"))
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note)
            else:
                note.remove()
            if cost == 0.0:
                break
        assert best is not None
        placed.append(best[1].get_window_extent(renderer))


def _chart(proj: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [r["job"] for r in proj]
    x = range(len(jobs))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(jobs)), 4))
    ours = [r["usd"] for r in proj]
    err = [
        [u - r["usd_low"] for u, r in zip(ours, proj, strict=True)],
        [r["usd_high"] - u for u, r in zip(ours, proj, strict=True)],
    ]
    ax.bar([i - 0.2 for i in x], ours, width=0.4, yerr=err, capsize=4, label="ours (range)")
    ax.bar([i + 0.2 for i in x], [r["replay_usd"] for r in proj], width=0.4, label="replay")
    ax.set_xticks(list(x), jobs)
    ax.set_ylabel("USD")
    ax.set_title("Projected full-scale training bill per recipe")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_bills(out_dir: Path, tracking_uri: str, log_to_mlflow: bool = True) -> dict[str, Path]:
    proj = projected_bills()
    actual = actual_bills(tracking_uri, [r["job"] for r in proj])
    evaluated = evaluated_runs(tracking_uri, sorted({r["job"].split(":")[0] for r in proj}))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out_dir / "bills.md",
        "json": out_dir / "bills.json",
        "png": out_dir / "bills.png",
        "quality_png": out_dir / "quality.png",
    }
    md = _markdown(proj, actual) + "\n".join(_quality_markdown(proj, evaluated)) + "\n"
    paths["md"].write_text(md)
    paths["json"].write_text(
        json.dumps({"projected": proj, "actual": actual, "evaluated": evaluated}, indent=1)
    )
    _chart(proj, paths["png"])
    _quality_chart(proj, evaluated, paths["quality_png"])
    if log_to_mlflow:
        from orchestrator.tracking.runs import client as mlflow_client

        client = mlflow_client(tracking_uri)
        exp = client.get_experiment_by_name("bills")
        exp_id = exp.experiment_id if exp else client.create_experiment("bills")
        run = client.create_run(exp_id, run_name="bills", tags={"kind": "bills"})
        for p in paths.values():
            client.log_artifact(run.info.run_id, str(p))
        for r in proj:
            client.log_metric(
                run.info.run_id, f"projected_usd_spot/{r['job']}", r["usd_spot"] or 0.0
            )
            client.log_metric(
                run.info.run_id, f"projected_usd_on_demand/{r['job']}", r["usd_on_demand"]
            )
        client.set_terminated(run.info.run_id)
    return paths

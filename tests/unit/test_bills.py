import json

from mlflow.tracking import MlflowClient

from orchestrator.cost.bills_report import write_bills


def test_bills_table_chart_and_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("vicuna")
    run = client.create_run(
        exp,
        run_name="r1",
        tags={
            "scale": "local",
            "bill_usd": "0.002",
            "bill_usd_projected": "0.0019",
            "bill_error_pct": "5.2",
            "stop_reason": "completed",
            "attempts": "1",
        },
    )
    # an evaluated run: its score, its judge, and the model it graded (a logged model's bill)
    model = client.create_logged_model(exp, name="sft", tags={"bill_usd": "0.5",
                                                                "bill_usd_upstream": "0.1"})  # fmt: skip
    judged = client.create_run(exp, run_name="r1-eval", tags={
        "scale": "local", "bill_usd": "0.001", "eval.judge": "local-rubric @ local",
        "eval.model_id": model.model_id,
    })  # fmt: skip
    for key, value in (("eval/mt_bench_score", 4.25), ("eval/base_mt_bench_score", 3.0),
                       ("eval/gain_over_base", 1.25), ("eval/usd_per_point", 0.48),
                       ("eval/pair_win_rate_adjusted", 0.625)):  # fmt: skip
        client.log_metric(judged.info.run_id, key, value)
    paths = write_bills(tmp_path / "out", uri)
    md = paths["md"].read_text()
    assert "| vicuna | 13.0B | 8 x A100-80GB |" in md
    assert "| vicuna | r1 | local | $0.002000 | $0.001900 | +5.2% | completed | 1 |" in md
    data = json.loads(paths["json"].read_text())
    assert data["projected"][0]["usd_spot"] > 0 and {a["run"] for a in data["actual"]} == {
        "r1",
        "r1-eval",
    }
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["quality_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [ev] = data["evaluated"]
    assert ev["run"] == "r1-eval" and ev["score"] == 4.25 and ev["usd"] == 0.601
    assert "| koala:sft | Koala-13B (the recipe) | 5.35 | $222 |" in md  # its training stage
    assert (
        "| vicuna | r1-eval | local | 4.25 | 3.00 | +1.25 | $0.480000 | 62% | local-rubric @ local "
        "| $0.600000 | $0.001000 |" in md
    )
    bills_exp = client.get_experiment_by_name("bills")
    [bills_run] = client.search_runs([bills_exp.experiment_id])
    assert {a.path for a in client.list_artifacts(bills_run.info.run_id)} == {
        "bills.md",
        "bills.json",
        "bills.png",
        "quality.png",
    }
    assert run.info.run_id


def test_quality_chart_labels_neither_overlap_nor_leave_the_axes():
    """Points a few dollars apart at nearly one score (GPT4All-13B-Snoozy 5.41 at $80, Koala-13B
    5.35 at $230 near the right edge): every label inside the axes, none over another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.cost.bills_report import _place_labels

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [("Vicuna-13B", (94.0, 6.39)), ("GPT4All-13B-Snoozy", (80.0, 5.41)),
              ("Koala-13B", (230.0, 5.35)), ("Koala-13B-again", (231.0, 5.36))]  # fmt: skip
    ax.scatter([p[1][0] for p in points], [p[1][1] for p in points])
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 300)
    ax.set_ylim(0, 10.5)
    fig.tight_layout()
    _place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == [p[0] for p in points]
    assert all(box.x0 <= b.x0 and b.x1 <= box.x1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)

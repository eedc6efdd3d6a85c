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
    paths = write_bills(tmp_path / "out", uri)
    md = paths["md"].read_text()
    assert "| vicuna | 13.0B | 8 x A100-80GB |" in md
    assert "| vicuna | r1 | local | $0.002000 | $0.001900 | +5.2% | completed | 1 |" in md
    data = json.loads(paths["json"].read_text())
    assert data["projected"][0]["usd_spot"] > 0 and data["actual"][0]["run"] == "r1"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bills_exp = client.get_experiment_by_name("bills")
    [bills_run] = client.search_runs([bills_exp.experiment_id])
    assert {a.path for a in client.list_artifacts(bills_run.info.run_id)} == {
        "bills.md",
        "bills.json",
        "bills.png",
    }
    assert run.info.run_id

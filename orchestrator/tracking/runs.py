"""The MLflow side of a launch (driver only): one experiment per job, one MLflow run per run.

A relaunch of the same run name continues the same MLflow run (its id is kept in the run folder
and in every checkpoint), so a run's metrics, params and bill stay in one place across attempts.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from orchestrator.compose.load import flatten
from orchestrator.paths import REPO_ROOT
from orchestrator.tracking.redact import redact, redact_value, scrub

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
HTTP_TIMEOUT_S = 10
"""The one fail-fast setting for MLflow HTTP calls (driver and workers): a request to a dead
tracking server gives up after this long, without MLflow's minutes of retries; the workers'
logger keeps its own journal and retries in its thread (mlflow_logger.py). A user's
MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES win."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute, so workers find it too)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str):
    """An MLflow client whose every string on the way in (params, tags, run names, text and
    table artifacts, text files logged as artifacts) is scrubbed of secrets (tracking/redact.py).
    All MLflow writes of the project go through it, failing fast (HTTP_TIMEOUT_S)."""
    set_fail_fast_http()
    return _safe_client_class()(tracking_uri=uri)


_TEXT_SUFFIXES = (".md", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".csv", ".log")


@functools.cache
def _safe_client_class():
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    def tags_of(tags):
        return {k: scrub(str(v)) for k, v in (tags or {}).items()}

    class SafeMlflowClient(MlflowClient):
        def create_logged_model(self, experiment_id, *args, tags=None, params=None, **kwargs):
            return super().create_logged_model(
                experiment_id, *args, tags=tags_of(tags), params=tags_of(params), **kwargs
            )

        def set_experiment_tag(self, experiment_id, key, value, *args, **kwargs):
            return super().set_experiment_tag(
                experiment_id, key, scrub(str(value)), *args, **kwargs
            )

        def create_run(self, experiment_id, *args, tags=None, run_name=None, **kwargs):
            return super().create_run(
                experiment_id, *args, tags=tags_of(tags),
                run_name=scrub(run_name) if run_name else run_name, **kwargs,
            )  # fmt: skip

        def set_tag(self, run_id, key, value, *args, **kwargs):
            return super().set_tag(run_id, key, scrub(str(value)), *args, **kwargs)

        def log_param(self, run_id, key, value, *args, **kwargs):
            return super().log_param(run_id, key, scrub(str(value)), *args, **kwargs)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
            params = [Param(p.key, scrub(str(p.value))) for p in params]
            tags = [RunTag(t.key, scrub(str(t.value))) for t in tags]
            return super().log_batch(run_id, metrics, params, tags, *args, **kwargs)

        def log_text(self, run_id, text, artifact_file, *args, **kwargs):
            return super().log_text(run_id, scrub(text), artifact_file, *args, **kwargs)

        def log_dict(self, run_id, dictionary, artifact_file, *args, **kwargs):
            return super().log_dict(run_id, redact(dictionary), artifact_file, *args, **kwargs)

        def log_table(self, run_id, data, artifact_file, *args, **kwargs):
            if isinstance(data, dict):
                data = {k: [redact_value(x) for x in v] for k, v in data.items()}
            return super().log_table(run_id, data, artifact_file, *args, **kwargs)

        def log_artifact(self, run_id, local_path, artifact_path=None, *args, **kwargs):
            path = Path(local_path)
            if path.is_file() and path.suffix in _TEXT_SUFFIXES:
                text = path.read_text(errors="replace")
                clean = scrub(text)
                if clean != text:  # log a scrubbed copy under the same name
                    import tempfile

                    with tempfile.TemporaryDirectory() as d:
                        copy = Path(d) / path.name
                        copy.write_text(clean)
                        return super().log_artifact(
                            run_id, str(copy), artifact_path, *args, **kwargs
                        )
            return super().log_artifact(run_id, local_path, artifact_path, *args, **kwargs)

    return SafeMlflowClient


def start_or_continue(
    uri: str, experiment: str, run_name: str, run_id: str | None, tags: dict[str, str]
) -> str:
    """The MLflow run id: `run_id` if given (and it exists), else a new run named `run_name`."""
    c = client(uri)
    if run_id is not None:
        c.get_run(run_id)  # raises if it vanished
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
    # MLflow 3 opens experiments it cannot classify in its GenAI view: these train models.
    c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3.17's kind for model-training experiments (its UI shows the training layout: runs,
metrics and charts first, not traces and judges)."""


def register_model(
    uri: str,
    run_id: str,
    name: str,
    export_url: str,
    tags: dict[str, str],
    params: dict[str, str],
) -> str:
    """The run's exported model as an MLflow 3 logged model, by reference: its tags hold where
    the export lives (`export_uri`, the durable store) and what it cost; no weights are copied
    into MLflow. Returns the model id."""
    c = client(uri)
    exp_id = c.get_run(run_id).info.experiment_id
    model = c.create_logged_model(
        exp_id, name=name, source_run_id=run_id,
        tags={"export_uri": export_url, **tags}, params=params,
        model_type="causal-lm",
    )  # fmt: skip
    c.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def log_config(uri: str, run_id: str, config: dict[str, Any], attempt: int) -> None:
    """Params = the flattened resolved config (first attempt only: MLflow params are immutable);
    the resolved config of every attempt as an artifact. Secrets are redacted from both."""
    import yaml
    from mlflow.entities import Param

    config = redact(config)
    c = client(uri)
    if attempt == 1:
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            c.log_batch(run_id, params=params[i : i + 100])
    c.log_text(
        run_id, yaml.safe_dump(config, sort_keys=False), f"config/resolved_attempt{attempt}.yaml"
    )


def git_commit() -> str:
    """The commit of the code that runs ("+dirty" when it has uncommitted changes), or "unknown"."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - not a checkout, or no git
        return "unknown"


def set_fail_fast_http() -> None:
    """MLflow's HTTP client retries for minutes by default; a dead server must not stall us."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))


def finish(uri: str, run_id: str, tags: dict[str, str], status: str) -> None:
    set_tags(uri, run_id, tags)
    client(uri).set_terminated(run_id, status=status)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def run_url(uri: str, run_id: str) -> str:
    exp_id = client(uri).get_run(run_id).info.experiment_id
    return f"#/experiments/{exp_id}/runs/{run_id}"

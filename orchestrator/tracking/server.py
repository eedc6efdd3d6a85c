"""A local MLflow tracking server with light settings (`make mlflow-ui`).

By default 4 web workers and a job runner (15 processes, 3.6 GB); with one worker and job
execution off it is 2 processes, ~0.55 GB, ready in a few seconds (docs/facts/stack.md, MLflow).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def server_command(
    port: int, backend_uri: str, artifacts_destination: str, host: str = "127.0.0.1"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra or {})}
    return env


def start_server(
    port: int,
    backend_uri: str,
    artifacts_destination: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 90.0,
) -> subprocess.Popen:
    """Start a server in the background and wait until it answers /health."""
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        server_command(port, backend_uri, artifacts_destination),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env(env),
        start_new_session=True,
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except Exception:  # noqa: BLE001
            time.sleep(0.3)
    stop_server(proc)
    raise TimeoutError(
        f"mlflow server on port {port} not healthy after {timeout_s} s; see {log_path}"
    )


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:  # noqa: BLE001
            pass


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The runs page with charts (`#/experiments/<id>` alone opens a GenAI overview)."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def main(job: str, port: int) -> None:
    from mlflow.tracking import MlflowClient

    backend = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    artifacts = str(Path.cwd() / "mlartifacts")
    base = f"http://127.0.0.1:{port}"
    exp = MlflowClient(backend).get_experiment_by_name(job)
    print(f"MLflow UI: {base}")
    print(
        f"runs of {job!r}: "
        + (runs_page_url(base, exp.experiment_id) if exp else f"(none yet: make launch job={job})")
    )
    os.execvpe(sys.executable, server_command(port, backend, artifacts), server_env())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vicuna", int(os.environ.get("MLFLOW_PORT", "5000")))

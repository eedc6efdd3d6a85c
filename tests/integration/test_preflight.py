"""`make preflight`: every check against a real endpoint where one exists here (moto_server for
STS, S3, ECR and Service Quotas; a real MLflow tracking server), each failure with its fix."""

from __future__ import annotations

import json

import pytest

from orchestrator.launch.backends import run_checks

pytestmark = pytest.mark.integration


@pytest.fixture
def aws(start_moto, monkeypatch):
    import boto3

    url, _ = start_moto()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="runs")
    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="orchestrator")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "0" * 64, "size": 1, "mediaType": "x"}, "layers": []}  # fmt: skip
    ecr.put_image(
        repositoryName="orchestrator", imageManifest=json.dumps(manifest), imageTag="latest"
    )
    return url


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    from orchestrator.launch.ray_session import free_port
    from orchestrator.tracking.server import start_server, stop_server

    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_server(port, f"sqlite:///{d}/mlflow.db", str(d / "art"), d / "log")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def _by_name(checks):
    return {c.name.split(" (")[0]: c for c in checks}


def test_preflight_passes_what_is_there_and_names_the_fix_for_what_is_not(
    aws, tracking, monkeypatch
):
    import os

    from orchestrator.compose.load import compose

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    cfg = compose("vicuna", "full", ["storage.root=s3://runs/orchestrator"])
    every = run_checks("aws-spot", cfg, dict(os.environ))
    checks = _by_name(every)
    for name in (
        "storage and tracking reachable from every node",
        "AWS credentials",
        "read/write durable store",
        "MLflow tracking server",
        "container image",
    ):
        assert checks[name].ok, checks[name].line()  # fmt: skip
    # moto serves no EC2 quotas: the check says it could not read them, and what to do, for
    # the job's own node type and each it may fail over to (p4d, then p5's 192 vCPUs)
    quotas = [c for c in every if c.name.startswith("spot vCPU quota")]
    assert quotas and not any(q.ok for q in quotas)
    assert all("L-7212CCBC" in q.fix for q in quotas)
    fixes = " ".join(q.fix for q in quotas)
    assert "96 vCPUs of p4de.24xlarge" in fixes and "192 vCPUs of p5.48xlarge" in fixes
    assert "on_demand vCPU quota" in checks  # the job may fall back to on-demand

    # what a first run trips on, each with its fix
    bad = compose("vicuna", "full", ["storage.root=s3://no-such-bucket/x"])
    checks = _by_name(
        run_checks("aws-spot", bad, {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    )
    assert not checks["read/write durable store"].ok
    assert "s3:PutObject" in checks["read/write durable store"].fix
    assert not checks["MLflow tracking server"].ok
    local = compose("vicuna", "full")  # ./runs: a folder the nodes cannot see
    checks = _by_name(run_checks("aws-spot", local, dict(os.environ)))
    assert (
        "storage.root=s3://bucket/prefix"
        in checks["storage and tracking reachable from every node"].detail
    )
    import boto3

    boto3.client("ecr").batch_delete_image(
        repositoryName="orchestrator", imageIds=[{"imageTag": "latest"}]
    )
    checks = _by_name(run_checks("aws-spot", cfg, dict(os.environ)))
    assert not checks["container image"].ok and "docker push" in checks["container image"].fix


def test_kuberay_preflight_checks_kubectl_and_the_image_and_skips_ec2(aws, tracking, monkeypatch):
    """The KubeRay backend's checks: kubectl (absent here: failed, with its fix), the pods'
    image on ECR (moto), and the EC2 node-type and quota checks reported as not applying."""
    import os

    from orchestrator.compose.load import compose
    from orchestrator.launch.preflight import summary

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("PATH", os.path.dirname(os.sys.executable))  # this venv, no kubectl
    cfg = compose("vicuna", "full", ["storage.root=s3://runs/orchestrator"])
    checks = run_checks("kuberay", cfg, dict(os.environ))
    by = _by_name(checks)
    assert by["storage and tracking reachable from every node"].ok
    assert by["read/write durable store"].ok and by["MLflow tracking server"].ok
    assert not by["kubectl"].ok and "install kubectl" in by["kubectl"].fix
    assert by["Ray token Secret"].ok and by["container image"].ok
    skipped = [c for c in checks if not c.applies]
    assert {c.name for c in skipped} == {
        "AWS credentials and region",
        "node types and EC2 vCPU quotas",
    }
    assert "2 did not apply" in summary(checks)

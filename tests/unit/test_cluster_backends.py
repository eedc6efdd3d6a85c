"""Cluster backends (launch/backends.py): which backend a name gets, what each runs, and what
each adds to a submitted job. The fake backend's up/down run for real in
tests/integration/test_autoscaler.py; the KubeRay preflight against moto's ECR in
tests/integration/test_preflight.py. No kubectl here: what KubeRay's up and down run is
checked as the commands they are built from."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.launch import backends
from orchestrator.launch.cluster_state import known


def test_every_cluster_in_infra_gets_its_backend_by_its_definition():
    assert known() == ["aws-spot", "kuberay", "local-fake"]
    kinds = {name: type(backends.backend(name)) for name in known()}
    assert kinds == {
        "aws-spot": backends.RayUpBackend,
        "kuberay": backends.KubeRayBackend,
        "local-fake": backends.FakeBackend,
    }
    for bad in ("gcp", "../infra/aws-spot", "kuberay/raycluster"):
        with pytest.raises(ConfigError, match=r"known: \['aws-spot', 'kuberay', 'local-fake'\]"):
            backends.backend(bad)


def test_a_cluster_file_without_a_provider_or_with_two_rayclusters_is_refused(
    tmp_path, monkeypatch
):
    from orchestrator.launch import cluster_state

    monkeypatch.setattr(cluster_state, "INFRA", tmp_path)
    (tmp_path / "odd.yaml").write_text("cluster_name: odd\n")
    with pytest.raises(ConfigError, match=r"odd.yaml: provider.type is missing"):
        backends.backend("odd")
    (tmp_path / "two").mkdir()
    doc = "kind: RayCluster\nmetadata: {name: a}\nspec: {}\n"
    (tmp_path / "two" / "raycluster.yaml").write_text(doc + "---\n" + doc)
    with pytest.raises(ConfigError, match=r"exactly one RayCluster"):
        backends.backend("two")


def test_kuberay_up_and_down_are_these_kubectl_commands():
    b = backends.backend("kuberay")
    assert (b.cluster_name, b.namespace, b.token_secret) == (
        "orchestrator", "default", "orchestrator-ray-token",
    )  # fmt: skip
    cmd = b.commands(local_port=18265, wait_s=600)
    ns = ["kubectl", "--namespace", "default"]
    # the token goes in from its file, never as text on a command line
    assert cmd["secret"][:6] == [*ns, "create", "secret", "generic"]
    assert any(a.startswith("--from-file=auth_token=") and a.endswith("/.ray/auth_token")
               for a in cmd["secret"])  # fmt: skip
    assert cmd["manifest"] == [*ns, "apply", "--filename", str(b.path)]
    assert cmd["wait"] == [*ns, "wait", "raycluster/orchestrator",
                           "--for=jsonpath={.status.state}=ready", "--timeout=600s"]  # fmt: skip
    assert cmd["forward"] == [*ns, "port-forward", "svc/orchestrator-head-svc", "18265:8265"]
    assert cmd["delete"] == [*ns, "delete", "--ignore-not-found", "--filename", str(b.path)]


def test_kuberay_without_kubectl_says_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl on it (nor on this machine)
    b = backends.backend("kuberay")
    for action in (b.up, b.down, b.status):
        with pytest.raises(ConfigError, match=r"needs kubectl .* KubeRay operator"):
            action()
    check = b._tool_check()
    assert not check.ok and "install kubectl" in check.fix


def test_a_raycluster_without_the_token_secret_is_refused_naming_the_field():
    b = backends.backend("kuberay")
    doc = {**b.raycluster, "spec": {**b.raycluster["spec"], "authOptions": {"mode": "token"}}}
    bare = backends.KubeRayBackend("k", b.path, {"documents": [doc]})
    with pytest.raises(ConfigError, match=r"spec.authOptions must be \{mode: token, secretName"):
        _ = bare.token_secret


def test_only_the_fake_cluster_shares_this_machines_disk(monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fake = backends.job_env("local-fake")
    assert fake["ORCHESTRATOR_STORAGE_SHARED"] == "1"
    assert fake["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    for name in ("aws-spot", "kuberay"):
        env = backends.job_env(name)
        assert env["ORCHESTRATOR_CLUSTER"] == name
        assert "ORCHESTRATOR_STORAGE_SHARED" not in env and "MLFLOW_TRACKING_URI" not in env
    monkeypatch.setenv("ORCHESTRATOR_STORAGE_ROOT", "s3://bucket/runs")
    assert backends.job_env("local-fake")["ORCHESTRATOR_STORAGE_ROOT"] == "s3://bucket/runs"


def test_each_backend_says_which_checks_it_runs():
    cfg = compose("vicuna", "local")
    fake = backends.backend("local-fake").preflight(cfg, {})
    assert fake and all(not c.applies for c in fake)
    assert "fake" in fake[0].detail


def test_make_reaches_every_backend(tmp_path):
    import subprocess
    import sys

    from orchestrator.make_args import make_argv

    for name in known():
        assert make_argv("cluster-up", {"ORCH_cluster": name}) == ["cluster", "up", name]
    # `make cluster-up cluster=kuberay` on a machine without kubectl: the clear error, exit 2
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "cluster", "up", "kuberay"],
        capture_output=True, text=True, env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode != 0 and "needs kubectl" in out.stderr, out.stderr[-2000:]


def test_a_chosen_port_is_never_one_ray_takes_by_default(monkeypatch):
    """A private cluster's dashboard once drew 52365, the dashboard agent's default port, and
    Ray refused to start (CI): free_port draws again past Ray's default ports."""
    import socket

    from orchestrator.launch import ray_session

    drawn = iter([52365, 6379, 41234])

    class Socket:  # the OS's port choice, scripted
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, addr):
            self.port = next(drawn)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(socket, "socket", Socket)
    assert ray_session.free_port() == 41234

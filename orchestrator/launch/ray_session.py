"""A Ray cluster for one launch: connect to RAY_ADDRESS, or start a private local one.

A private cluster gets its own temp dir and a free dashboard port, so two launches (or a launch
and the tests) on one host never collide, and it is always shut down by whoever started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})
"""Ports a Ray process takes by default when not told otherwise (GCS, dashboard, client
server, dashboard agent): a port chosen here for one component must not be one of them, or Ray
refuses to start ('... is trying to use a port number 52365 that is used by other
components': a private cluster's dashboard once drew 52365, its agent's default)."""


def free_port() -> int:
    """A port free on this machine now, and not one Ray would take by default."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def code_runtime_env(environ) -> dict | None:
    """How the code reaches the workers of a cluster named by RAY_ADDRESS: the repository's
    allow-listed files as Ray's `working_dir` (what a Jobs API submission ships), unless this
    launcher already runs as a submitted job (ORCHESTRATOR_CLUSTER: the job's working_dir is
    already there). Nodes cannot see this machine's editable install."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if environ.get("ORCHESTRATOR_CLUSTER") or environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR):
        return None  # a job submitted through the Jobs API: its own runtime env ships the code
    from orchestrator.launch.shipping import working_dir_excludes
    from orchestrator.paths import REPO_ROOT

    return {"working_dir": str(REPO_ROOT), "excludes": working_dir_excludes()}


@contextlib.contextmanager
def ray_cluster(num_cpus: int, num_gpus: int = 0) -> Iterator[str]:
    """Yields a description of the cluster in use; shuts down what it started."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield "existing Ray session"
        return
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=code_runtime_env(os.environ))
        try:
            yield f"Ray cluster at {address}"
        finally:
            ray.shutdown()
        return
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths are limited
    dashboard_port = free_port()
    # Ray (>= 2.59) starts a cluster on this machine with token auth: its dashboard and Jobs
    # API refuse requests without the token (tests/integration/test_security.py checks it).
    with _loopback_node_ip():
        _init_local(num_cpus, num_gpus, dashboard_port, temp_dir)
    try:
        yield f"local Ray cluster (dashboard http://127.0.0.1:{dashboard_port}, temp {temp_dir})"
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _init_local(num_cpus: int, num_gpus: int, dashboard_port: int, temp_dir: str) -> None:
    import ray

    ray.init(
        address="local",
        num_cpus=max(num_cpus, os.cpu_count() or 1),
        num_gpus=num_gpus,
        include_dashboard=True,
        dashboard_port=dashboard_port,
        _temp_dir=temp_dir,
        log_to_driver=True,
        configure_logging=True,
        logging_level="warning",
    )


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """While a private cluster starts: every one of its processes takes 127.0.0.1 as its node
    IP, so Ray binds its unauthenticated Prometheus servers (the autoscaler's, the dashboard's,
    each agent's) to loopback instead of every interface. Ray resolves a loopback
    `_node_ip_address` back to the routable IP unless clusters are "disabled" (its setting for
    single-machine use): for this process, its constant; for the processes it starts, the
    environment variable. Both restored after."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env

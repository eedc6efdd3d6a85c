"""What of the driver's environment reaches the training workers.

On a Ray cluster a worker starts from its node's environment, not the driver's. Settings the
workers need (endpoints, region, the tracking server) are passed along with the training
config. Static secrets are not, by default: Ray keeps the training config in its run state and
a runtime environment in the GCS, both readable by anyone with dashboard access. Nodes should
use their own credentials (the instance profile of infra/aws-spot.yaml, IRSA on Kubernetes).
A static secret is forwarded only when named in ORCHESTRATOR_FORWARD_SECRETS (comma-separated),
e.g. `ORCHESTRATOR_FORWARD_SECRETS=HF_TOKEN` for a gated base model on nodes without a token of
their own (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.config.schema import ConfigError

SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "GCE_METADATA_HOST",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "HF_ENDPOINT",
)
"""Forwarded whenever set: where things are, never a credential."""

SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "ORCHESTRATOR_CHECKPOINT_KEY",
)
"""Forwarded only when named in ORCHESTRATOR_FORWARD_SECRETS."""

OPT_IN = "ORCHESTRATOR_FORWARD_SECRETS"


def forwarded_secrets(environ: Mapping[str, str]) -> list[str]:
    """The secret names the user opted in to forward (validated, in SECRETS order)."""
    raw = environ.get(OPT_IN, "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECRETS]
    if unknown:
        raise ConfigError(
            f"{OPT_IN}: unknown name(s) {unknown}; the secrets that can be forwarded are "
            f"{list(SECRETS)}"
        )
    return [n for n in SECRETS if n in names]


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the training workers get from the driver: every setting that is set,
    and the opted-in secrets that are set."""
    names = list(SETTINGS) + forwarded_secrets(environ)
    return {k: environ[k] for k in names if k in environ}

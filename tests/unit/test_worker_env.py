"""Which of the driver's variables reach the training workers: settings always, static
secrets only by name."""

import pytest

from orchestrator.config.schema import ConfigError
from orchestrator.launch.worker_env import OPT_IN, SECRETS, worker_env

ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t/with+slash",
    "HF_TOKEN": "hf_abc",
    "HOME": "/root",
}


def test_settings_go_secrets_stay_by_default():
    got = worker_env(ENV)
    assert got == {
        "AWS_ENDPOINT_URL": ENV["AWS_ENDPOINT_URL"],
        "MLFLOW_TRACKING_URI": ENV["MLFLOW_TRACKING_URI"],
    }
    assert not set(got) & set(SECRETS)


def test_named_secrets_are_forwarded_when_set():
    got = worker_env({**ENV, OPT_IN: "HF_TOKEN, MLFLOW_TRACKING_TOKEN"})
    assert got["HF_TOKEN"] == "hf_abc"
    assert "MLFLOW_TRACKING_TOKEN" not in got  # named but not set
    assert "AWS_SECRET_ACCESS_KEY" not in got  # not named


def test_an_unknown_name_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_FORWARD_SECRETS.*\['HOME'\].*HF_TOKEN"):
        worker_env({**ENV, OPT_IN: "HF_TOKEN,HOME"})


def test_a_submission_carries_only_opted_in_secrets(monkeypatch):
    from orchestrator.launch.named_clusters import job_env

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(OPT_IN, raising=False)
    assert not set(job_env("aws-spot")) & set(SECRETS)
    monkeypatch.setenv(OPT_IN, "HF_TOKEN")
    env = job_env("aws-spot")
    assert env["HF_TOKEN"] == "hf_abc" and env[OPT_IN] == "HF_TOKEN"
    assert "AWS_SECRET_ACCESS_KEY" not in env

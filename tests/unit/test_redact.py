import pytest

from orchestrator.compose.load import compose, flatten, to_dict
from orchestrator.tracking.redact import REDACTED, redact, redact_value


@pytest.mark.parametrize(
    "key",
    [
        "aws_secret_access_key",
        "password",
        "hf_token",
        "api_key",
        "api-key",
        "AWS_ACCESS_KEY_ID",
        "private_key",
        "credentials",
        "auth",
    ],
)
def test_secret_keys_are_redacted(key):
    assert redact({"s3": {key: "abc"}}) == {"s3": {key: REDACTED}}


@pytest.mark.parametrize(
    "value",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a" * 36,
        "hf_" + "B" * 34,
        "sk-" + "x" * 40,
        "xoxb-1234567890-abcdef",
        "-----BEGIN RSA PRIVATE KEY-----\nMII...",
    ],
)
def test_secret_looking_values_are_redacted_whatever_the_key(value):
    assert redact({"note": value}) == {"note": REDACTED}


def test_url_passwords_are_redacted_but_the_rest_stays():
    assert (
        redact_value("postgresql://me:hunter2@db:5432/mlflow")
        == f"postgresql://me:{REDACTED}@db:5432/mlflow"
    )
    assert redact_value("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_ordinary_config_is_untouched():
    cfg = to_dict(compose("vicuna", "full"))
    assert redact(cfg) == cfg  # tokenizer, mean_tokens, ... are not secrets
    flat = flatten(redact(cfg))
    assert (
        flat["data.tokenizer"] == "huggyllama/llama-13b"
        and flat["data.lengths.mean_tokens"] == 1400
    )


def test_the_projects_own_and_forwarded_secrets_are_scrubbed_whatever_their_names():
    from orchestrator.tracking.redact import REDACTED, scrub

    env = {
        "ORCHESTRATOR_CHECKPOINT_KEY": "signing-key-0123456789",
        "ORCHESTRATOR_FORWARD_SECRETS": "WAREHOUSE_DSN",
        "WAREHOUSE_DSN": "dsn-value-0123456789",
        "STRIPE_KEY": "rk_live_0123456789",
        "HOME": "/home/someone-long",
    }
    text = (
        "a signing-key-0123456789 b dsn-value-0123456789 c rk_live_0123456789 d /home/someone-long"
    )
    out = scrub(text, env)
    assert out.count(REDACTED) == 3 and "/home/someone-long" in out

"""Keep credentials out of MLflow, the durable store, logs and error messages.

Three layers, applied by `scrub` (text) and `redact` (nested dicts/lists):

1. the values of this process's secret environment variables (AWS keys, tokens, passwords: any
   variable whose name looks secret), wherever they appear, as CI systems mask their secrets;
2. secret-looking keys (`password`, `token`, `aws_secret_access_key`, ...) have their values
   replaced;
3. secret-shaped text: AWS access key ids, GitHub/Hugging Face/OpenAI/Slack tokens, private-key
   blocks, URL passwords (including ones with `/` or `@`, as AWS secrets have), query-string
   tokens and signatures (pre-signed URLs), `Bearer`/`Basic` authorization values.

What is redacted becomes `***REDACTED***`; everything else is left as it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***REDACTED***"

_SECRET_KEY = re.compile(
    r"(secret|passw(or)?d|token(?!s|izer)|api[_-]?key|access[_-]?key|credential|private[_-]?key"
    r"|auth|signature)",
    re.IGNORECASE,
)  # "token" but not "tokens" (counts: mean_tokens, max_tokens) or "tokenizer"
_NOT_SECRET_KEYS = ("auth_mode",)
_SECRET_VALUES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bghp_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style key
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)"),
]
# scheme://user:password@host: the password runs to the last '@' before a host (it may hold
# '/' and '@'); over-redacting a path that contains '@' is the safe side.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S+)@(?P<host>[^@/\s?#]+)"
)
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&;][^=&\s#]*(?:sig|signature|token|secret|passw|key|credential|auth|code)"
    r"[^=&\s#]*=)(?P<v>[^&\s#\"']+)",
    re.IGNORECASE,
)
# Authorization values: a credential-shaped word (a digit or a base64 symbol in it, so that
# "Basic instructions" stays) after Bearer/Basic.
_AUTH_HEADER = re.compile(
    r"\b(?P<k>Bearer|Basic)\s+(?P<v>(?=[A-Za-z._~+/=-]*[0-9+/=])[A-Za-z0-9._~+/=-]{12,})"
)


OWN_SECRETS = ("ORCHESTRATOR_CHECKPOINT_KEY", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN", "AWS_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY")  # fmt: skip
"""Secrets the project itself reads (the checkpoint signing key: whoever knows it can sign a
manifest), whatever their names look like."""


def secret_names(environ: Mapping[str, str]) -> set[str]:
    """Environment variables whose values are secret: the project's own (`OWN_SECRETS`), every
    name listed in ORCHESTRATOR_FORWARD_SECRETS, and any secret-looking name (`*_KEY` too)."""
    forwarded = {n.strip() for n in environ.get("ORCHESTRATOR_FORWARD_SECRETS", "").split(",")}
    return {
        k
        for k in environ
        if k in OWN_SECRETS
        or k in forwarded
        or (
            not k.startswith("ORCHESTRATOR_FORWARD")
            and (_SECRET_KEY.search(k) or k.endswith("_KEY"))
        )
    }


def _env_secrets(environ: Mapping[str, str]) -> list[str]:
    """Values of secret environment variables (`secret_names`), longest first (8+ characters:
    shorter ones would mask ordinary words)."""
    values = {environ[k] for k in secret_names(environ) if len(environ[k]) >= 8}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret in it replaced (known environment secrets, then shapes)."""
    if not isinstance(text, str) or not text:
        return text
    for secret in _env_secrets(os.environ if environ is None else environ):
        text = text.replace(secret, REDACTED)
    for p in _SECRET_VALUES:
        text = p.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@{m['host']}", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}{REDACTED}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['k']} {REDACTED}", text)


def redact_value(value: Any) -> Any:
    """A value with its secrets scrubbed (non-strings unchanged)."""
    return scrub(value) if isinstance(value, str) else value


def is_secret_key(key: str) -> bool:
    # Only the last path component names the field ("data.tokenizer" is not a secret).
    last = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(last)) and not last.lower().startswith(_NOT_SECRET_KEYS)


def redact(obj: Any, key: str = "") -> Any:
    """A copy of a (nested) dict/list with secret-looking keys and values replaced."""
    if isinstance(obj, dict):
        return {
            k: (
                REDACTED
                if is_secret_key(str(k)) and v not in (None, "")
                else redact(v, f"{key}.{k}" if key else str(k))
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v, key) for v in obj]
    return redact_value(obj)

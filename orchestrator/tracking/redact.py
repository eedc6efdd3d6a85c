"""Keep credentials out of MLflow: any key or value that looks like a secret is redacted."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***REDACTED***"

_SECRET_KEY = re.compile(
    r"(secret|passw(or)?d|token|api[_-]?key|access[_-]?key|credential|private[_-]?key|auth)",
    re.IGNORECASE,
)
_SECRET_VALUES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bghp_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style key
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@"
)


def redact_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if any(p.search(value) for p in _SECRET_VALUES):
        return REDACTED
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)


def is_secret_key(key: str) -> bool:
    # Only the last path component names the field ("data.tokenizer" is not a secret).
    last = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(last)) and not last.startswith(
        ("tokenizer", "max_tokens", "tokens_")
    )


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
    if isinstance(obj, list):
        return [redact(v, key) for v in obj]
    return redact_value(obj)

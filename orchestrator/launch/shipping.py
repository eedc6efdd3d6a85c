"""What of the repository a launch on a cluster ships to its nodes (Ray's `working_dir`)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.paths import REPO_ROOT

SHIPPED = ("orchestrator", "jobs", "conf", "data", "pyproject.toml", "README.md")
"""What a launch on a cluster uploads of the repository (Ray's `working_dir`): an allow-list
at the top level, so a `.hf_token`, `service-account.json` or `aws_credentials.ini` left in the
checkout never leaves the machine."""

SECRET_PATTERNS = [
    ".env", ".env.*", "*.env", "*.pem", "*.key", "id_*", ".netrc", "*.p12", "*.pfx", ".pypirc",
    ".git-credentials", "*credential*", "*secret*", "*password*", "*token*", "*service-account*",
    "*service_account*",
    "*.kdbx", "!*.py",  # code is shipped whatever its name (tokenizer.py)
]  # fmt: skip
"""Credential-looking files anywhere inside what is shipped (gitignore syntax, as Ray reads it)."""

HEAVY = ["**/__pycache__", "*.pt", "*.db", ".torch_extensions", "runs", "mlruns", ".venv"]


def working_dir_excludes(root: Path = REPO_ROOT) -> list[str]:
    """Ray `excludes` for the repository: every top-level entry outside `SHIPPED`, then heavy
    and credential-looking files inside it."""
    outside = sorted(f"/{p.name}" for p in root.iterdir() if p.name not in SHIPPED)
    return outside + HEAVY + SECRET_PATTERNS

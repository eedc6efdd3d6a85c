"""Where the repository's own files are: jobs, conf blocks, infra, shipped samples. A leaf
module (it imports only the leaf error type), so any package may import it without a cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
JOBS_DIR = REPO_ROOT / "jobs"
CONF_DIR = REPO_ROOT / "conf"
INFRA_DIR = REPO_ROOT / "infra"


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping ({} when empty); errors name the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data

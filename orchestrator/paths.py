"""Where the repository's own files are: jobs, conf blocks, infra, shipped samples. A leaf
module (it imports only the leaf error type), so any package may import it without a cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
JOBS_DIR = REPO_ROOT / "jobs"
CONF_DIR = REPO_ROOT / "conf"
INFRA_DIR = REPO_ROOT / "infra"


MAX_YAML_NODES = 100_000
"""The most nodes a config file may expand to, aliases expanded (the largest shipped job has a
few hundred): a few kilobytes of nested anchors ("billion laughs") would otherwise expand to
gigabytes while it is composed."""


def check_yaml_expansion(text: str, where: str, max_nodes: int = MAX_YAML_NODES) -> None:
    """Refuse YAML whose aliases expand beyond `max_nodes` nodes, reading only its event stream
    (nothing is expanded, so a bomb is refused in milliseconds).

    Raises:
        ConfigError: naming the file and the anchor that went over.
    """
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [nodes so far, anchor] of each open collection
    total = 0

    def add(n: int, anchor: str | None = None) -> None:
        nonlocal total
        if stack:
            stack[-1][0] += n
            over = stack[-1][0]
        else:
            total += n
            over = total
        if over > max_nodes:
            what = f" (through alias *{anchor})" if anchor else ""
            raise ConfigError(
                f"{where}: expands to more than {max_nodes:,} YAML nodes{what}: nested anchors "
                "and aliases are refused beyond that; write the values out"
            )

    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                stack.append([1, ev.anchor])
            elif isinstance(ev, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                n, anchor = stack.pop()
                if anchor:
                    sizes[anchor] = n
                add(n)
            elif isinstance(ev, yaml.ScalarEvent):
                if ev.anchor:
                    sizes[ev.anchor] = 1
                add(1)
            elif isinstance(ev, yaml.AliasEvent):
                add(sizes.get(ev.anchor or "", 1), ev.anchor)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping ({} when empty); errors name the file."""
    try:
        text = path.read_text()
        check_yaml_expansion(text, str(path))
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data

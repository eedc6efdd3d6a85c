"""docs/layout.md names every package of the library, every recipe and every block folder: a
new one fails here until the map says what it is."""

from __future__ import annotations

from pathlib import Path

from orchestrator.compose.load import job_names
from orchestrator.paths import REPO_ROOT

LAYOUT = (REPO_ROOT / "docs" / "layout.md").read_text()


def test_every_package_is_on_the_map():
    pkgs = sorted(p.name for p in (REPO_ROOT / "orchestrator").iterdir()
                  if p.is_dir() and any(p.glob("*.py")))  # fmt: skip
    missing = [p for p in pkgs if f"  {p}/" not in LAYOUT]
    assert not missing, f"docs/layout.md does not describe orchestrator/{missing}"


def test_every_recipe_and_block_folder_is_on_the_map():
    missing = [j for j in job_names() if j not in LAYOUT]
    assert not missing, f"docs/layout.md does not list the jobs {missing}"
    blocks = sorted(p.name for p in Path(REPO_ROOT / "conf").iterdir() if p.is_dir())
    assert not [b for b in blocks if f"{b}/" not in LAYOUT], blocks

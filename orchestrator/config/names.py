"""Safe names, re-exported where the config's users look for them (they live in the leaf module
orchestrator/names.py, which the run records import without the config)."""

from orchestrator.names import NAME, RULE, check_name, is_safe_name

__all__ = ["NAME", "RULE", "check_name", "is_safe_name"]

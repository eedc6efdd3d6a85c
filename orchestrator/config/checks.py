"""The field checks, re-exported (they live in the leaf module orchestrator/fields.py, which the
objectives' settings import without the config)."""

from orchestrator.fields import choice, positive

__all__ = ["choice", "positive"]

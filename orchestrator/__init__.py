"""LLM training orchestrator."""

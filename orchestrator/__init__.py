"""LLM training orchestrator."""

import logging as _logging

# bitsandbytes notices that say nothing about a run of this project, at every import or call:
# its CPU backend cannot find an optional 4-bit kernel package (no job here uses 4-bit), and
# every int8 matmul announces that its input is cast to fp16 (how LLM.int8 always works).
for _name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

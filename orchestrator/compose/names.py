"""The names a job's data section uses, checked against the registries that define them: the
prompt templates (data/prompts.py, the one place a template is defined), the conversation
formats (data/instruct.py's adapters) and the prompt-task formats (data/prompt_tasks.py). Run
on every composed job (load.compose) and on every config a worker receives (load.from_dict);
each error names the key and the valid values."""

from __future__ import annotations

from orchestrator.config.schema import DataConfig, JobConfig
from orchestrator.data.instruct import SFT_FORMATS
from orchestrator.data.prompt_tasks import FORMATS as PROMPT_FORMATS
from orchestrator.data.prompts import STYLES, format_templates
from orchestrator.errors import ConfigError
from orchestrator.fields import choice

SOURCE_FORMATS = SFT_FORMATS
"""Formats a conversation source may have (data/instruct.py's adapters): a mixture's sources."""
DATA_FORMATS = (*SOURCE_FORMATS, "mixture", "text")
"""Formats of `data.kind: sft`."""
TEMPLATES = tuple(STYLES)
FORMAT_TEMPLATES = format_templates()
"""Each format and the templates that can read it (a mixture is checked source by source)."""


def check_names(cfg: JobConfig) -> JobConfig:
    check_data(cfg.data)
    return cfg


def check_data(data: DataConfig) -> None:
    choice("data.template", data.template, TEMPLATES)
    if data.kind == "preference":  # any prompt style renders a prompt and its replies
        return
    if data.kind == "prompts":  # a prompt and the answer a reward checks
        choice("data.format", data.format, PROMPT_FORMATS)
        formats = [("data", data.format)]
    else:
        choice("data.format", data.format, DATA_FORMATS)
        if data.format == "mixture":
            formats = [(f"data.sources[{i}]", s.format) for i, s in enumerate(data.sources)]
            for key, fmt in formats:
                choice(f"{key}.format", fmt, SOURCE_FORMATS)
        elif data.format == "text":  # pretraining: documents, no template
            formats = []
        else:
            formats = [("data", data.format)]
    for key, fmt in formats:
        if data.template not in FORMAT_TEMPLATES[fmt]:
            raise ConfigError(
                f"data.template={data.template!r} cannot read {key}.format={fmt!r}; "
                f"valid: {list(FORMAT_TEMPLATES[fmt])}"
            )

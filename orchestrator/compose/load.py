"""Compose a job config: schema defaults <- job file <- scale overlay <- conf blocks <- overrides.

A job file looks like::

    job: vicuna
    model: llama_13b            # a block: conf/model/llama_13b.yaml
    train: {strategy: fsdp}     # inline keys
    scales:
      local:
        model: {block: tiny_llama, num_layers: 2}   # a block plus overrides
        train: {max_steps: 30}

A section given as a string names a block in `conf/<dir>/`; a mapping may name one with `block:`
and override its keys. The `scales.<scale>` overlay is merged over the common keys before blocks
are resolved, so a scale can swap a block. Command-line overrides (`a.b=c`) come last.

A job may also have `variants:` (e.g. Cerebras-GPT's sizes), merged over the common keys before
the scale overlay; `variant=NAME` on the command line picks one, else `default_variant`.

Errors name the file (or "command line") and the key, so a typo fails before any cluster starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from orchestrator.compose.names import check_names
from orchestrator.config.schema import SCALES, ConfigError, JobConfig
from orchestrator.memo import Memo
from orchestrator.paths import CONF_DIR, JOBS_DIR, check_yaml_expansion, read_yaml_mapping

# Job section -> folder of reusable blocks under conf/.
BLOCK_DIRS = {"model": "model", "data": "data", "hardware": "hardware", "cost": "pricing"}
# Every job gets the price catalog unless it names another one.
DEFAULT_BLOCKS = {"cost": "catalog"}


def job_names() -> list[str]:
    """Every recipe: the files under jobs/ (tests, bench and reports enumerate from here)."""
    return sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))


def job_path(job: str) -> Path:
    path = Path(job)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = JOBS_DIR / f"{job}.yaml"
    if not path.exists():
        known = job_names()
        raise ConfigError(f"no job named {job!r}: {path} does not exist; known jobs: {known}")
    return path


def _split_block(section: str, value: Any, where: str) -> tuple[Path | None, dict[str, Any]]:
    """Split a section value (block name, or mapping with optional `block:`) into (block file, overrides)."""
    if isinstance(value, str):
        value = {"block": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{section}' must be a block name or a mapping, got {value!r}")
    value = dict(value)
    name = value.pop("block", None)
    if name is None:
        return None, value
    path = CONF_DIR / BLOCK_DIRS[section] / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{where}: {section} block {name!r} not found ({path}); known: {known}")
    return path, value


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        elif isinstance(val, dict) and isinstance(out.get(key), str) and "block" not in val:
            out[key] = {"block": out[key], **val}  # keys over a block named earlier
        else:
            out[key] = val
    return out


def _merge_into(schema: DictConfig, data: dict[str, Any], where: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, data)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        owner = getattr(e, "object_type", None)
        if isinstance(e, ConfigKeyError) and dataclasses.is_dataclass(owner):
            valid = sorted(f.name for f in dataclasses.fields(owner))
            msg = f"unknown key; valid keys here: {valid}"
        raise ConfigError(f"{where}: invalid key {key!r}: {msg}") from None


def calls_resolver(text: str) -> bool:
    """Does `text` call a resolver (`${oc.env:X}`, `${ oc.env :X}`, nested, any spelling)?
    Decided by OmegaConf's own grammar: a value OmegaConf would resolve is parsed as OmegaConf
    parses it, and any resolver node in the tree counts. A value with `${` that does not parse
    counts too (OmegaConf would fail on it later anyway)."""
    if "${" not in text:
        return False
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    from omegaconf.grammar_parser import parse

    try:
        tree = parse(text)
    except GrammarParseError:
        return True
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            return True
        todo.extend(node.getChildren() if hasattr(node, "getChildren") else [])
    return False


def _refuse_resolvers(obj: Any, where: str, key: str = "") -> None:
    """Interpolation between config keys (`${optim.lr}`) is allowed; resolvers are not: they
    would read the environment (`${oc.env:AWS_SECRET_ACCESS_KEY}`) into params, tags, artifacts
    and error messages. Checked on the raw text, before anything is resolved."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _refuse_resolvers(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _refuse_resolvers(v, where, f"{key}[{i}]")
    elif isinstance(obj, str) and calls_resolver(obj):
        name = key or obj.partition("=")[0]
        raise ConfigError(
            f"{where}: {name}: resolvers such as ${{oc.env:...}} are not allowed in job configs "
            "(they would copy environment values, secrets included, into MLflow and logs); "
            "interpolating another key, like ${optim.lr}, is"
        )


def compose(
    job: str,
    scale: str | None = None,
    overrides: list[str] | None = None,
) -> JobConfig:
    """Build and validate the config of `job` at `scale` (default: the job's `default_scale`, else local).

    Raises:
        ConfigError: naming the file/key at fault and what would be valid.
    """
    path = job_path(job)
    raw = read_yaml_mapping(path)
    default_scale = raw.pop("default_scale", "local")
    scale = scale or default_scale
    overrides, variant, stage = _selectors(list(overrides or []), raw.pop("default_variant", None))
    merged = _job_dict(path, raw, scale, variant, stage)
    for item in list(overrides):  # `model=llama_7b` swaps a whole block
        key, _, value = item.partition("=")
        if key in BLOCK_DIRS and value and not value.startswith(("{", "[")):
            merged[key] = value
            overrides.remove(item)
    merged.setdefault("job", path.stem)
    merged["scale"] = scale
    for section, block in DEFAULT_BLOCKS.items():
        merged.setdefault(section, block)

    where = f"{path} (scale {scale})"
    blocks: dict[str, Path] = {}
    layers: list[tuple[dict[str, Any], str]] = []  # merged over the schema in this order
    for section in BLOCK_DIRS:
        if section in merged:
            block_path, merged[section] = _split_block(section, merged[section], where)
            if block_path is not None:  # the block first, so its own errors name its file
                blocks[section] = block_path
                block_data = read_yaml_mapping(block_path)
                _refuse_resolvers(block_data, str(block_path), section)
                layers.append(({section: block_data}, str(block_path)))
    _refuse_resolvers(merged, where)
    layers.append((merged, where))
    # What the config is made of, read: the same text composes to the same config
    key = repr((scale, [data for data, _ in layers], overrides))
    return _COMPOSED.get(key, lambda: _build(layers, overrides, where, blocks))


def _build(
    layers: list[tuple[dict[str, Any], str]], overrides: list[str], where: str,
    blocks: dict[str, Path],
) -> JobConfig:  # fmt: skip
    """The JobConfig of the layers merged over the schema in order, then the overrides."""
    cfg: DictConfig = OmegaConf.structured(JobConfig)
    for data, source in layers:
        cfg = _merge_into(cfg, data, source)
    if overrides:
        cfg = _merge_overrides(cfg, overrides)
        where += " with the command-line overrides"
    return _to_job_config(cfg, where, blocks)


_COMPOSED: Memo[JobConfig] = Memo(64)
"""Configs already composed in this process, by what they were made of (the job file's keys,
each block file's, the scale, the overrides). A launch composes its job several times (the
pipeline, each stage, the projection of full scale): OmegaConf's merges took 0.2-0.9 s a time.
Only a valid config is kept; each caller gets its own copy to change."""


def _selectors(
    overrides: list[str], variant: str | None
) -> tuple[list[str], str | None, str | None]:
    """(the other overrides, the variant, the stage): `variant=1.3b` picks one of the job's
    variants (default: the job's `default_variant`), `stage=sft` one stage of a pipeline job
    (launch/pipeline.py)."""
    stage = None
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "variant":
            variant = value
        elif key == "stage":
            stage = value
        else:
            rest.append(item)
    return rest, variant, stage


def _job_dict(
    path: Path, raw: dict[str, Any], scale: str, variant: str | None, stage: str | None
) -> dict[str, Any]:
    """The job file's settings at `scale`: its top level, then the variant's, then the scale's
    section, then the stage's config, each winning over the one before."""
    scales = raw.pop("scales", {}) or {}
    variants = raw.pop("variants", {}) or {}
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not valid; choose one of {list(SCALES)}")
    if scale not in scales:
        raise ConfigError(
            f"{path}: the job has no 'scales.{scale}' section; it has {sorted(scales)}"
        )
    unknown = set(scales) - set(SCALES)
    if unknown:
        raise ConfigError(f"{path}: unknown scales {sorted(unknown)}; valid: {list(SCALES)}")
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"{path}: no variant {variant!r}; the job has {sorted(variants) or 'none'}"
            )
        spec = dict(variants[variant] or {})
        # A variant may carry per-scale settings too; they win over the job's own.
        scales = _deep_merge(scales, spec.pop("scales", None) or {})
        raw = _deep_merge(raw, spec)
    merged: dict[str, Any] = _deep_merge(raw, scales[scale] or {})
    stages = merged.pop("stages", None) or {}
    if stage is not None:
        if stage not in stages:
            raise ConfigError(
                f"{path}: no stage {stage!r}; the job has {list(stages) or 'no stages'}"
            )
        spec = stages[stage] or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: stages.{stage} must be a mapping, got {spec!r}")
        merged = _deep_merge(merged, spec.get("config") or {})
    return merged


def _merge_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The command line's `key=value` overrides (values are YAML) merged over `cfg`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} must look like key=value")
        _refuse_resolvers(item, "command line")
        check_yaml_expansion(item.partition("=")[2], f"command line: {item.partition('=')[0]}")
    try:
        dotlist = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.from_dotlist(overrides)))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        raise ConfigError(
            f"command line: cannot read the overrides {overrides}: "
            f"{str(e).splitlines()[0]} (values are YAML: quote brackets and colons)"
        ) from None
    return _merge_into(cfg, dotlist, "command line")


def _to_job_config(cfg: DictConfig, where: str, blocks: dict[str, Path]) -> JobConfig:
    """The validated JobConfig (its checks run here), sized by the planner when it is on."""
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError as e:
        if str(e).startswith("cost.") and "cost" in blocks:  # a catalog entry: name its file
            where += f", price catalog {blocks['cost']}"
        raise ConfigError(f"{where}: {e}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"{where}: {key}: {str(e).splitlines()[0]}") from None
    assert isinstance(obj, JobConfig)
    try:
        check_names(obj)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if obj.plan.enabled:  # from-scratch pretraining sized by the Chinchilla planner
        from orchestrator.plan.planner import apply_plan

        try:
            obj = apply_plan(obj)
        except ConfigError as e:
            raise ConfigError(f"{where}: plan: {e}") from None
    return obj


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any]) -> JobConfig:
    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(JobConfig), data))
    assert isinstance(obj, JobConfig)
    return check_names(obj)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, val in data.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict) and val:
            out.update(flatten(val, name + "."))
        else:
            out[name] = val
    return out


def job_stages(job: str, scale: str | None = None) -> dict[str, dict[str, Any]]:
    """The `stages:` of a pipeline job at `scale` (the scale's `stages` overlay merged), in
    order: name -> {input, budget_share, gate, config}. Empty for a single-stage job."""
    path = job_path(job)
    raw = read_yaml_mapping(path)
    scales = raw.get("scales", {}) or {}
    scale = scale or raw.get("default_scale", "local")
    stages = _deep_merge(raw.get("stages") or {}, (scales.get(scale) or {}).get("stages") or {})
    if not isinstance(stages, dict):
        raise ConfigError(f"{path}: stages must be a mapping of stage name -> settings")
    return {str(k): dict(v or {}) for k, v in stages.items()}


def job_configs(
    job: str, scale: str | None = None, overrides: list[str] | None = None
) -> dict[str, JobConfig]:
    """Every config a job runs: {stage: config} for a pipeline job, {"": config} otherwise."""
    stages = job_stages(job, scale)
    if not stages:
        return {"": compose(job, scale, overrides)}
    return {s: compose(job, scale, [*(overrides or []), f"stage={s}"]) for s in stages}

"""The trainer's configuration: one `TrainConfig` of nested sections, from YAML plus dotted overrides.

Overrides are typed as verl and SkyRL users type them, `section.key=value` (`algorithm.eps_high=0.28
rollout.group_size=4 learner.lr=1e-6`), each value read as a YAML scalar. Every section forbids
unknown keys: a misspelt one is an error that names the closest valid key, never a silent default.
`to_yaml()` writes the resolved config back, and loading that text gives the same config.

The defaults are a run a laptop can do (SmolLM2-135M on the CPU, short episodes); the loss defaults
are CWM's. `configs/train/cwm-32b.yaml` holds CWM's budgets at 32B scale.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forager.core import ForagerError
from forager.train.sections import (
    AlgorithmConfig,
    CheckpointConfig,
    EnvConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    RolloutConfig,
    SyncConfig,
)

__all__ = ["TrainConfig", "ConfigError", "load_train_config", "apply_overrides", "config_keys"]


class ConfigError(ForagerError):
    """A training config that cannot be used: the message names the key and what to write instead."""


class TrainConfig(BaseModel):
    """Everything one training run needs: what to train, on which tasks, with which loss, on what hardware."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run_name: str = "forager-grpo"
    """A name for the run: the logs and checkpoints carry it."""
    out_dir: str = "runs/forager-grpo"
    """Where checkpoints, metrics (`metrics.jsonl`) and the trajectories of the run go; a run resumes from it."""
    seed: int = 0
    """Seeds task order, sampling and parameter initialisation of anything not loaded."""
    ray_address: str | None = None
    """Ray cluster for rollout workers, engines and learner: `auto`, `ray://host:10001`, or None for one
    process on this machine (threads, no Ray)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The policy's weights and tokenizer."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """The tasks and the episode budgets (turns, context, command timeout)."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Groups, inference engines and sampling."""
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    """The GRPO loss and its options."""
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """Learner devices, token budgets, learning rate, FSDP2."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """AdamW and the learning-rate schedule."""
    sync: SyncConfig = Field(default_factory=SyncConfig)
    """Weight updates to the engines and the staleness bound."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Saving and resuming."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Metrics and saved trajectories."""

    @model_validator(mode="after")
    def _budgets_agree(self) -> TrainConfig:
        learner, env = self.learner, self.env
        if learner.microbatch_tokens < env.max_context_tokens:
            raise ValueError(
                f"learner.microbatch_tokens ({learner.microbatch_tokens}) is below env.max_context_tokens "
                f"({env.max_context_tokens}): a full-length episode would not fit one forward pass; raise "
                "learner.microbatch_tokens (learner.sequence_parallel spreads it over GPUs) or lower the context")
        if learner.tokens_per_batch < learner.microbatch_tokens:
            raise ValueError(f"learner.tokens_per_batch ({learner.tokens_per_batch}) is below "
                             f"learner.microbatch_tokens ({learner.microbatch_tokens}): a batch must hold at least "
                             "one full microbatch")
        if env.max_tokens_per_turn > env.max_context_tokens:
            raise ValueError(f"env.max_tokens_per_turn ({env.max_tokens_per_turn}) exceeds env.max_context_tokens "
                             f"({env.max_context_tokens})")
        if learner.num_gpus and learner.num_gpus % learner.sequence_parallel:
            raise ValueError(f"learner.sequence_parallel ({learner.sequence_parallel}) must divide learner.num_gpus "
                             f"({learner.num_gpus}): each sequence-parallel group is whole")
        if learner.num_gpus == 0 and learner.sequence_parallel > 1:
            raise ValueError("learner.sequence_parallel > 1 needs GPUs (learner.num_gpus > 0)")
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML, sections in declaration order; `load_train_config` reads it back equal."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=100)


def config_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key (`algorithm.eps_high`, ...): the leaves of the nested sections."""
    keys = []
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        keys += config_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` (nested dicts, changed in place and returned) with each `a.b.c=value` set; values are YAML scalars."""
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. algorithm.eps_high=0.28)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({err})") from err
        path = key.split(".")
        _check_path(path, TrainConfig, key)
        target = data
        for part in path[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} holds a value, not a section")
            target = child
        target[path[-1]] = value
    return data


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The defaults, updated by a YAML file (the sections at its top level), then by dotted overrides."""
    data: dict[str, Any] = {}
    where = "the overrides"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read the training config {path}: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model:, rollout:, ...), "
                              f"got {type(loaded).__name__}")
        data = loaded or {}
        _check_keys(data, TrainConfig, "", where)
    apply_overrides(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid training config ({where}): {problems}") from err


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unknown(key: str, model: type[BaseModel], prefix: str) -> ConfigError:
    """An error for an unknown `key` under `prefix`, naming the closest valid key (difflib)."""
    full = f"{prefix}{key}"
    everything = config_keys(TrainConfig) + _section_names()
    by_leaf = {}
    for name in everything:
        by_leaf.setdefault(name.rsplit(".", 1)[-1], name)
    guesses = (
        [f"{prefix}{name}" for name in difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)]
        or [name for name in everything if name.rsplit(".", 1)[-1] == key]  # `lr=` for `learner.lr=`
        or difflib.get_close_matches(full, everything, n=1, cutoff=0.5)
        or [by_leaf[name] for name in difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.6)]
    )
    hint = f"; did you mean {guesses[0]!r}?" if guesses else f"; valid keys here: {', '.join(model.model_fields)}"
    return ConfigError(f"unknown key {full!r}{hint}")


def _section_names(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section:
            names += [f"{prefix}{name}", *_section_names(section, f"{prefix}{name}.")]
    return names


def _check_path(path: list[str], model: type[BaseModel], key: str) -> None:
    """Every part of a dotted override names a field; past a dict-valued field anything goes."""
    prefix = ""
    for depth, part in enumerate(path):
        if part not in model.model_fields:
            raise _unknown(part, model, prefix)
        annotation = model.model_fields[part].annotation
        section = _section_type(annotation)
        last = depth == len(path) - 1
        if section is None:
            if not last and not _is_mapping(annotation):
                raise ConfigError(f"override key {key!r}: {prefix}{part} is a value, not a section")
            return
        if last:
            raise ConfigError(f"override key {key!r} names the section {prefix}{part}; set one of its keys, "
                              f"e.g. {prefix}{part}.{next(iter(section.model_fields))}=...")
        model, prefix = section, f"{prefix}{part}."


def _check_keys(data: dict[str, Any], model: type[BaseModel], prefix: str, where: str) -> None:
    """Unknown keys anywhere in a loaded file, reported before pydantic sees them (with a suggestion)."""
    for key, value in data.items():
        if key not in model.model_fields:
            error = _unknown(str(key), model, prefix)
            raise ConfigError(f"{where}: {error}")
        section = _section_type(model.model_fields[key].annotation)
        if section is not None and isinstance(value, dict):
            _check_keys(value, section, f"{prefix}{key}.", where)


def _is_mapping(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is dict or annotation is dict

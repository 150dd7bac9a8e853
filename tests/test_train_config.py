"""TrainConfig: YAML files, dotted overrides as verl/SkyRL users type them, errors that name the right key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from forager.train.config import ConfigError, TrainConfig, config_keys, load_train_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted((ROOT / "configs" / "train").glob("*.yaml"))


def test_there_are_training_configs():
    assert "cwm-32b.yaml" in [p.name for p in TRAIN_CONFIGS]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_training_config_loads_and_round_trips(path):
    config = load_train_config(path)
    text = config.to_yaml()
    again = TrainConfig.model_validate(yaml.safe_load(text))
    assert again == config
    assert again.to_yaml() == text
    # the file sets only keys that exist: nothing in it is silently dropped
    written = yaml.safe_load(path.read_text())
    assert _leaves(written) <= _leaves(yaml.safe_load(text))


def test_cwm_32b_has_cwm_budgets_and_loss():
    config = load_train_config(ROOT / "configs" / "train" / "cwm-32b.yaml")
    assert (config.env.max_context_tokens, config.env.max_turns, config.env.command_timeout) == (131072, 128, 120)
    assert config.rollout.group_size == 8
    algo = config.algorithm
    assert (algo.baseline, algo.std_normalize) == ("mean", False)
    assert (algo.aggregation, algo.loss_constant) == ("constant", 131072)
    assert (algo.eps_low, algo.eps_high, algo.kl_coef, algo.skip_zero_advantage_groups) == (0.2, 0.25, 0.0, True)
    assert config.learner.microbatch_tokens >= config.env.max_context_tokens
    assert (ROOT / config.env.agent_config).is_file()


def test_defaults_are_cwm_loss_and_a_laptop_run():
    config = TrainConfig()
    assert config.model.path == "smollm2-135m-instruct"
    assert config.learner.num_gpus == 0 and config.rollout.backend == "hf"
    assert (config.algorithm.eps_low, config.algorithm.eps_high, config.algorithm.loss_constant) == (0.2, 0.25, 131072)
    assert config.sync.max_staleness == 0


def test_overrides_as_verl_users_type_them():
    config = load_train_config(overrides=["algorithm.eps_high=0.28", "rollout.group_size=4", "learner.lr=1e-6",
                                          "learner.fsdp.cpu_offload=true", "algorithm.tis_cap=null",
                                          "env.reward.unresolved=0", "algorithm.masked_terminations=[out_of_context]",
                                          "run_name=with=equals"])
    assert config.algorithm.eps_high == 0.28 and config.rollout.group_size == 4
    # PyYAML reads `1e-6` as text (YAML 1.1 wants a dot); pydantic parses it into the float
    assert config.learner.lr == 1e-6 and isinstance(config.learner.lr, float)
    assert config.learner.fsdp.cpu_offload is True and config.algorithm.tis_cap is None
    assert config.env.reward == {"unresolved": 0}
    assert config.algorithm.masked_terminations == ["out_of_context"]
    assert config.run_name == "with=equals"


def test_overrides_apply_over_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  eps_high: 0.27\nrollout:\n  group_size: 6\n")
    config = load_train_config(path, ["rollout.group_size=3"])
    assert (config.algorithm.eps_high, config.rollout.group_size) == (0.27, 3)


@pytest.mark.parametrize("override,suggestion", [
    ("algorithm.eps_hihg=0.3", "algorithm.eps_high"),
    ("algorthm.eps_high=0.3", "algorithm"),
    ("rollout.group=4", "rollout.group_size"),
    ("lr=1e-6", "learner.lr"),
    ("optimizer.lr=1e-6", "learner.lr"),
    ("learner.cpu_offload=true", "learner.fsdp.cpu_offload"),
    ("checkpoint.intervall=5", "checkpoint.interval"),
])
def test_an_unknown_override_names_the_closest_key(override, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_train_config(overrides=[override])


def test_an_unknown_key_in_a_file_names_the_closest_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("learner:\n  fsdp:\n    activation_checkpointng: false\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'learner.fsdp.activation_checkpointng'; "
                                          r"did you mean 'learner.fsdp.activation_checkpointing'"):
        load_train_config(path)


@pytest.mark.parametrize("override,message", [
    ("learner.lr=fast", "learner.lr"),
    ("rollout.group_size=1", "rollout.group_size"),
    ("algorithm.aggregation=seq-mean", "algorithm.aggregation"),
    ("algorithm.masked_terminations=[timeout]", "algorithm.masked_terminations"),
    ("learner=3", "names the section learner"),
    ("learner.lr.peak=3", "learner.lr is a value, not a section"),
    ("learner.lr", "not KEY=VALUE"),
    ("learner.microbatch_tokens=1024", "a full-length episode would not fit"),
    ("learner.sequence_parallel=2", "needs GPUs"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(overrides=[override])


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the training config"):
        load_train_config(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_train_config(listed)


def test_every_key_is_documented_and_settable():
    def walk(model: type[BaseModel], prefix: str = ""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no docstring"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation, f"{prefix}{name}.")

    walk(TrainConfig)
    keys = config_keys()
    assert {"algorithm.eps_high", "rollout.group_size", "learner.lr", "sync.max_staleness",
            "learner.tokens_per_batch", "learner.fsdp.cpu_offload", "checkpoint.interval", "ray_address"} <= set(keys)
    defaults = TrainConfig().model_dump(mode="json")
    overrides = []
    for key in keys:  # every key, set on the command line to its default (JSON is YAML), gives the defaults back
        value = defaults
        for part in key.split("."):
            value = value[part]
        overrides.append(f"{key}={json.dumps(value)}")
    assert load_train_config(overrides=overrides) == TrainConfig()


def _leaves(data: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            found |= _leaves(value, f"{prefix}{key}.")
        else:
            found.add(f"{prefix}{key}")
    return found

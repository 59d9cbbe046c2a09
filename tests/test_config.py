"""The schema holds every default: validation fills them in, bare sections are completed from it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sftvsrl.config import ConfigError, section_with_defaults
from sftvsrl.study import load_config

ROOT = Path(__file__).resolve().parents[1]


def minimal_config() -> dict:
    """config/config.yaml without any key the schema can fill in."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for key in ("data_seed", "dvc", "virl"):
        config.pop(key, None)
    config["gp"] = {"sizes": config["gp"]["sizes"]}
    config["sft"] = {k: config["sft"][k] for k in ("init_steps", "steps", "checkpoint_steps")}
    config["rl"] = {k: config["rl"][k] for k in ("viters", "steps", "checkpoint_steps")}
    config["eval"] = {k: config["eval"][k] for k in ("viter", "episodes", "splits")}
    config["mlflow"] = {}
    return config


def test_validation_fills_every_default_from_the_schema():
    config = load_config(minimal_config())
    assert config["data_seed"] == 0
    assert config["gp"]["num_cards"] == 4 and config["gp"]["prompt"] == "paper"
    assert config["sft"]["warmup_ratio"] == 0.03 and config["sft"]["loss"] == "nll"
    assert config["rl"]["epsilon"] == 0.1 and config["rl"]["save_every"] == 5
    assert config["rl"]["generation_batch_size"] is None
    assert config["eval"]["batch_size"] == 64
    assert config["mlflow"] == {"tracking_uri": "sqlite:///mlflow.db", "experiment": "sftvsrl"}
    # whole sections with defaults only: present after validation, so code indexes them directly
    assert config["dvc"] == {"remote": None}
    assert config["resources"] == {"accelerate_config": None, "conda_env": "cpu", "gpus_per_job": 0}


def test_a_given_value_wins_over_the_default():
    config = minimal_config()
    config["rl"]["epsilon"] = 0.2
    assert load_config(config)["rl"]["epsilon"] == 0.2


def test_gp_section_needs_its_sizes():
    config = minimal_config()
    del config["gp"]["sizes"]
    with pytest.raises(ConfigError, match="sizes"):
        load_config(config)


def test_bare_section_is_completed_without_being_changed():
    bare = {"cities": {"train": 5}, "sizes": {"sft": 1, "rl": 1, "eval_id": 1, "eval_ood_rule": 1}}
    before = copy.deepcopy(bare)
    virl = section_with_defaults("virl", bare)
    assert bare == before
    assert virl["cities"] == {"train": 5, "eval": 2}  # nested defaults fill the keys not given
    assert virl["routes"] is None and virl["grid"] == [6, 6] and virl["max_forward_per_leg"] == 3
    assert section_with_defaults("virl", None)["sizes"] == {"sft": 400, "rl": 64, "eval_id": 16, "eval_ood_rule": 16}


def _image_study(task: str, **model) -> dict:
    config = minimal_config()
    sizes = {"sft": 8, "rl": 8, "eval_id": 200, "eval_ood_rule": 200, "eval_ood_visual": 200}
    section = {"gp_vl": {"num_cards": 3, "eval_overlaps_train": True, "sizes": sizes}, "virl_vl": {"sizes": sizes}}
    config.update(tasks=[task], **{task: section[task]})
    config["model"] = {"base": "tiny-random-vl", "name": "tiny-vl", **model}
    config["eval"]["splits"] = ["eval_id", "eval_ood_rule", "eval_ood_visual"]
    if task == "virl_vl":
        config["eval"]["episodes"] = 16
    return config


def test_image_tasks_validate_with_a_vision_language_base():
    assert load_config(_image_study("gp_vl"))["gp_vl"]["card_size"] == [80, 112]
    assert load_config(_image_study("virl_vl"))["virl_vl"]["view_size"] == [128, 128]


@pytest.mark.parametrize("base", ["embedded", "tiny-random"])
def test_an_image_task_on_a_text_only_base_stops_naming_model_base(base):
    with pytest.raises(ConfigError, match=r"model\.base: .* text-only model, but tasks gp_vl show images"):
        load_config(_image_study("gp_vl", base=base))


def test_eval_splits_must_hold_a_split_of_every_task():
    config = minimal_config()
    config["eval"]["splits"] = ["eval_ood_visual"]
    with pytest.raises(ConfigError, match=r"eval\.splits: none of \['eval_ood_visual'\] is a split of task gp_l"):
        load_config(config)


def test_the_schema_names_the_registered_tasks_once():
    """One list of task names in the schema, equal to the registry's; every per-task map refers to it."""
    from sftvsrl.config import SCHEMA_PATH
    from sftvsrl.tasks import TASK_NAMES

    text = SCHEMA_PATH.read_text()
    schema = yaml.safe_load(text)
    assert schema["$defs"]["task_name"]["enum"] == list(TASK_NAMES)
    assert text.count("virl_vl]") == 1  # the enum, and no second list of the names
    config = minimal_config()
    config["model"]["init"] = {"gp_x": "org/name"}
    with pytest.raises(ConfigError, match=r"model\.init.*gp_x"):
        load_config(config)
    config["model"]["init"], config["eval"]["episodes"] = None, {"gp_x": 10}
    with pytest.raises(ConfigError, match=r"eval\.episodes"):
        load_config(config)


@pytest.mark.parametrize("base", ["./models/mine", "/no/such/model", "~/no-such-model-folder"])
def test_a_base_written_as_a_missing_path_stops_naming_model_base(base):
    config = minimal_config()
    config["model"]["base"] = base
    with pytest.raises(ConfigError, match=r"config key model\.base: .* no such folder"):
        load_config(config)


def test_a_base_written_as_an_existing_path_passes(tmp_path):
    config = minimal_config()
    config["model"]["base"] = str(tmp_path)
    assert load_config(config)["model"]["base"] == str(tmp_path)


def test_an_rl_start_must_name_a_checkpoint_the_study_makes():
    config = minimal_config()
    config["rl"]["starts"] = ["init", f"sft-{config['sft']['checkpoint_steps'][0] + 1}"]
    with pytest.raises(ConfigError, match=r"config key rl\.starts: \['sft-\d+'\] name no checkpoint"):
        load_config(config)
    config["rl"]["starts"] = ["init", f"sft-{config['sft']['checkpoint_steps'][0]}"]
    assert load_config(config)["rl"]["starts"][1].startswith("sft-")
    # a study without the SFT arm makes none of its checkpoints
    config["sft"]["arm"] = False
    with pytest.raises(ConfigError, match=r"config key rl\.starts: \['sft-\d+'\] .*sft\.arm: false"):
        load_config(config)


def test_an_rl_start_of_another_shape_is_refused_by_the_schema():
    config = minimal_config()
    config["rl"]["starts"] = ["sft24"]
    with pytest.raises(ConfigError, match=r"config key rl\.starts\.0"):
        load_config(config)


def test_numbers_arrive_as_the_schema_types_them():
    """Code reads config values without casts: an integer written where the schema says number is a float."""
    config = minimal_config()
    config["rl"]["learning_rate"] = 1
    config["eval"]["temperature"] = 1
    loaded = load_config(config)
    assert type(loaded["rl"]["learning_rate"]) is float and type(loaded["eval"]["temperature"]) is float
    assert type(loaded["rl"]["steps"]) is int and type(loaded["rl"]["skip_no_signal"]) is bool

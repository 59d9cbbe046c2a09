"""A study's config, checked whole: the schema's checks (`config.py`) and then those that ask the tasks
and the model registry. The Snakefile, the CLI and the benchmarks load configs through here, so a
misspelt key or an impossible combination stops the run before any job starts, naming the key.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, eval_episodes, schema, validate_schema
from .models import TEXT_ONLY_BASES
from .names import EVAL_OOD_VISUAL
from .tasks import get_task, register_task, task_section


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate in place (filling the schema's defaults) and return the config; raise ConfigError naming the key."""
    validate_schema(config, study_schema(config))
    _check_base_folder(config)
    _check_model_shows_images(config)
    for task in config["tasks"]:
        _check_task(config, task)
    return config


def load_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config from a dict, a YAML/JSON file path, or a JSON string; validated."""
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        text = str(source)
        config = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(Path(text).read_text())
    return validate_config(config)


def study_schema(config: dict[str, Any]) -> dict[str, Any]:
    """The package's schema, extended by the tasks that the config's `task_plugins` registers: each plugin's
    name joins the task names and its `config_schema` becomes the schema of its section."""
    plugins = register_plugins(config)
    if not plugins:
        return schema()
    extended = copy.deepcopy(schema())
    for name, task in plugins.items():
        if task.section in extended["properties"]:
            raise ConfigError(f"config key task_plugins.{name}: its section {task.section!r} is a key the study has")
        extended["$defs"]["task_name"]["enum"].append(name)
        extended["properties"][task.section] = task.config_schema
    return extended


def register_plugins(config: dict[str, Any]) -> dict[str, Any]:
    """Register the tasks named by `task_plugins` ({name: "module:Class"}); name -> task. A job's stage
    config carries the key too, so every process of the study knows the same tasks."""
    plugins = config.get("task_plugins") or {}
    if not isinstance(plugins, dict) or not all(isinstance(v, str) for v in plugins.values()):
        raise ConfigError("config key task_plugins: must map task names to module:Class strings")
    tasks = {}
    for name, spec in plugins.items():
        try:
            tasks[name] = register_task(name, spec)
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            raise ConfigError(f"config key task_plugins.{name}: {err}") from None
    return tasks


def _check_base_folder(config: dict[str, Any]) -> None:
    """A `model.base` written as a path (./, /, ~) must be a folder now, not a failed job later."""
    base = str(config["model"]["base"])
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().is_dir():
        raise ConfigError(f"config key model.base: {base!r} looks like a path, but no such folder exists")


def _check_model_shows_images(config: dict[str, Any]) -> None:
    image_tasks = [task for task in config["tasks"] if EVAL_OOD_VISUAL in get_task(task).splits]
    if image_tasks and config["model"]["base"] in TEXT_ONLY_BASES:
        raise ConfigError(
            f"config key model.base: {config['model']['base']!r} is a text-only model, but tasks "
            f"{', '.join(image_tasks)} show images: use tiny-random-vl, a vision-language hub id or a local folder"
        )


def _check_task(config: dict[str, Any], task: str) -> None:
    """The task's section exists and passes the task's own checks; the eval splits exist and are large enough."""
    splits = get_task(task).splits
    if not set(config["eval"]["splits"]) & set(splits):
        raise ConfigError(
            f"config key eval.splits: none of {config['eval']['splits']} is a split of task {task} ({', '.join(splits)})"
        )
    section = task_section(task)
    if section not in config:
        raise ConfigError(f"config key {section}: required because tasks lists {task}")
    episodes = eval_episodes(config, task)
    if episodes is None:
        raise ConfigError(f"config key eval.episodes: gives no number for task {task}")
    sizes = config[section]["sizes"]
    short = [s for s in config["eval"]["splits"] if s in sizes and sizes[s] < episodes]
    if short:
        raise ConfigError(
            f"config key eval.episodes ({episodes} for {task}) exceeds "
            f"{', '.join(f'{section}.sizes.{s}={sizes[s]}' for s in short)}: an eval split must hold at least "
            "eval.episodes rows"
        )
    try:
        get_task(task).check_config(config[section], config["data_seed"])
    except ValueError as err:
        raise ConfigError(f"config section {section}: {err}") from None

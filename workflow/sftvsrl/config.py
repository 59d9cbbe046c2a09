"""Load and validate study configs against workflow/schemas/config.schema.yaml.

The Snakefile and the CLI both go through `validate_config`, so a misspelt key stops the
run before any job starts, with a message that names the key. The schema holds every default:
validation fills them in, and code reads `config[...]` without a fallback of its own. Code that
holds one bare section (a task's `generate_splits`) completes it with `section_with_defaults`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema."""


@functools.cache
def _schema() -> dict[str, Any]:
    """The parsed schema (read once; never modified)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def section_with_defaults(section: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of one config section (e.g. "gp") with the schema's defaults filled in, unvalidated."""
    schema = _schema()
    node = copy.deepcopy(values) if values is not None else {}
    _fill_defaults(node, schema["properties"][section], schema)
    return node


def _fill_defaults(node: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """Insert schema defaults for missing keys of objects that are present."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(node, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = {**root["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            _fill_defaults(node[key], sub, root)


def _key_path(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{path + '.' if path else ''}{k}" for k in extra)
        return f"unknown config key {names}"
    return f"config key {path or '<top level>'}: {error.message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate in place (filling defaults) and return the config; raise ConfigError naming the key."""
    import jsonschema

    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [_key_path(e) for e in errors]
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(lines)))
    _fill_defaults(config, schema, schema)
    _check_consistency(config)
    return config


def _check_consistency(config: dict[str, Any]) -> None:
    """Cross-key rules a JSON schema cannot state."""
    for stage, last in (("sft", "steps"), ("rl", "steps")):
        bad = [k for k in config[stage]["checkpoint_steps"] if k > config[stage][last]]
        if bad:
            raise ConfigError(
                f"config key {stage}.checkpoint_steps: {bad} exceed {stage}.{last}={config[stage][last]}"
            )
    from .models import TEXT_ONLY_BASES
    from .names import EVAL_OOD_VISUAL
    from .tasks import get_task, task_section

    image_tasks = [task for task in config["tasks"] if EVAL_OOD_VISUAL in get_task(task).splits]
    if image_tasks and config["model"]["base"] in TEXT_ONLY_BASES:
        raise ConfigError(
            f"config key model.base: {config['model']['base']!r} is a text-only model, but tasks "
            f"{', '.join(image_tasks)} show images: use tiny-random-vl, a vision-language hub id or a local folder"
        )
    for task in config["tasks"]:
        if not set(config["eval"]["splits"]) & set(get_task(task).splits):
            raise ConfigError(
                f"config key eval.splits: none of {config['eval']['splits']} is a split of task {task} "
                f"({', '.join(get_task(task).splits)})"
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
                f"config key eval.episodes ({episodes} for {task}) exceeds {', '.join(f'{section}.sizes.{s}={sizes[s]}' for s in short)}"
                ": an eval split must hold at least eval.episodes rows"
            )
        try:
            get_task(task).check_config(config[section], config["data_seed"])
        except ValueError as err:
            raise ConfigError(f"config section {section}: {err}") from None
    _check_init(config)


# a local folder given as model.init must hold a Hugging Face model: its config and its weights
INIT_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _check_init(config: dict[str, Any]) -> None:
    """`model.init`: per-task entries name tasks of the study; a local folder holds config.json and
    weights; anything else must have a hub id's shape (whether the hub has it shows only when it is fetched)."""
    init = config["model"]["init"]
    if isinstance(init, dict):
        other = sorted(set(init) - set(config["tasks"]))
        if other:
            raise ConfigError(
                f"config key model.init: names {', '.join(other)}, not in tasks ({', '.join(config['tasks'])})"
            )
        entries = {f"model.init.{task}": spec for task, spec in init.items()}
    else:
        entries = {} if init is None else {"model.init": init}
    for key, spec in entries.items():
        folder = Path(spec).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ConfigError(f"config key {key}: {spec!r} has no config.json: not a Hugging Face model folder")
            if not any(next(folder.glob(pattern), None) for pattern in INIT_WEIGHTS):
                raise ConfigError(f"config key {key}: {spec!r} holds no weights ({', '.join(INIT_WEIGHTS)})")
        elif not HUB_ID.fullmatch(spec):
            raise ConfigError(f"config key {key}: {spec!r} is neither a local folder nor a hub id (org/name)")


def init_checkpoint(config: dict[str, Any], task: str) -> str | None:
    """The checkpoint (hub id or local folder) `model.init` starts a task from; None: the study trains its warm-up."""
    init = config["model"]["init"]
    return init.get(task) if isinstance(init, dict) else init


def eval_episodes(config: dict[str, Any], task: str) -> int | None:
    """Rows per eval split of a task: `eval.episodes`, a number or a {task: number} map."""
    episodes = config["eval"]["episodes"]
    return episodes.get(task) if isinstance(episodes, dict) else episodes


def load_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config from a dict, a YAML/JSON file path, or a JSON string; validated."""
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        text = str(source)
        if text.lstrip().startswith("{"):
            config = json.loads(text)
        else:
            config = yaml.safe_load(Path(text).read_text())
    return validate_config(config)


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a config (for MLflow tags)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]

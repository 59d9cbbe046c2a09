"""Study configs against workflow/schemas/config.schema.yaml: the schema, its defaults, small readers.

The bottom of the package's import graph: nothing of the package is imported here.
`sftvsrl.study.load_config` / `validate_config` (what the Snakefile and the CLI call) run this
module's checks and then those that ask the tasks, so a misspelt key stops the run before any
job starts, with a message that names the key. The schema holds every default:
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
def schema() -> dict[str, Any]:
    """The parsed schema of the package's tasks (read once; never modified: extend a deep copy)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def section_with_defaults(section: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of one config section (e.g. "gp") with the schema's defaults filled in, unvalidated."""
    node_schema = schema()
    node = copy.deepcopy(values) if values is not None else {}
    _fill_defaults(node, node_schema["properties"][section], node_schema)
    return node


def _fill_defaults(node: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """Insert schema defaults for missing keys of objects that are present; integers where the schema says
    number become floats."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(node, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = {**root["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node and _is_number(sub) and type(node[key]) is int:
            node[key] = float(node[key])  # as the schema types it ("1" for 1.0): code reads values uncast
        if key in node:
            _fill_defaults(node[key], sub, root)


def _is_number(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "number" or isinstance(kind, list) and "number" in kind


def _key_path(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{path + '.' if path else ''}{k}" for k in extra)
        return f"unknown config key {names}"
    if "propertyNames" in error.schema_path:  # a per-task map naming no registered task
        return f"unknown config key {path}.{error.instance}: {error.message}"
    return f"config key {path or '<top level>'}: {error.message}"


def validate_schema(config: dict[str, Any], study_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate against the schema (`study_schema`: the package's, or one extended by task plugins) in place,
    filling defaults, plus the cross-key rules that need nothing but the config; return it. Raises
    ConfigError naming the key. `sftvsrl.study.validate_config` adds the checks that ask the tasks."""
    import jsonschema

    rules = study_schema or schema()
    validator = jsonschema.Draft202012Validator(rules)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [_key_path(e) for e in errors]
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(lines)))
    _fill_defaults(config, rules, rules)
    _check_steps(config)
    _check_init(config)
    return config


def _check_steps(config: dict[str, Any]) -> None:
    for stage in ("sft", "rl"):
        bad = [k for k in config[stage]["checkpoint_steps"] if k > config[stage]["steps"]]
        if bad:
            raise ConfigError(
                f"config key {stage}.checkpoint_steps: {bad} exceed {stage}.steps={config[stage]['steps']}"
            )
    kept = config["sft"]["checkpoint_steps"] if config["sft"]["arm"] else []
    unknown = [s for s in config["rl"]["starts"] if s != "init" and int(s.split("-")[1]) not in kept]
    if unknown:
        made = f"sft.checkpoint_steps: {kept}" if config["sft"]["arm"] else "sft.arm: false, no SFT arm"
        raise ConfigError(f"config key rl.starts: {unknown} name no checkpoint the study makes ({made})")


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


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a config (for MLflow tags)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]

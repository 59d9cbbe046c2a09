"""Task registry: config name -> Task object. Imports lazily so one task's deps never load another's.

The package's tasks are the lines of `_REGISTRY`; a task defined outside the package (a researcher's
own module) joins through the config key `task_plugins` ({name: "module:Class"}), which
`sftvsrl.study` hands to `register_task` before it validates the config."""

from __future__ import annotations

from importlib import import_module

from .base import Attempt, Episode, EpisodeRatio, Task  # noqa: F401 (EpisodeRatio: for plug-in tasks)

# name -> "module:Class"; the class names its config section (`Task.section`)
_REGISTRY = {
    "gp_l": "sftvsrl.tasks.gp:GeneralPointsTask",
    # GP-VL has its own section: its splits add eval_ood_visual, and a study may run both.
    "gp_vl": "sftvsrl.tasks.gp_vl:GeneralPointsVisionTask",
    "virl_l": "sftvsrl.tasks.virl:VirlTask",
    # V-IRL-VL has its own section: its splits add eval_ood_visual, and image keys.
    "virl_vl": "sftvsrl.tasks.virl_vl:VirlVisionTask",
}

TASK_NAMES = tuple(_REGISTRY)  # the package's own tasks (the schema's `$defs.task_name`)


def register_task(name: str, spec: str) -> Task:
    """Add a task defined outside the package: `spec` is "module:Class", the module importable, the class
    a Task with `section` (its config section) and `config_schema` (that section's JSON schema, with
    defaults). Registering the same spec again is a no-op; another spec under a taken name is an error."""
    if name in _REGISTRY and _REGISTRY[name] != spec:
        raise ValueError(f"task name {name!r} is taken by {_REGISTRY[name]}")
    task = _load(spec)
    if not hasattr(task, "config_schema"):
        raise ValueError(f"{spec} has no attribute 'config_schema': a task plugin declares its section's schema")
    _REGISTRY[name] = spec
    return task


def registered_tasks() -> tuple[str, ...]:
    """Every task known now: the package's and the registered plugins."""
    return tuple(_REGISTRY)


def task_section(name: str) -> str:
    """The config section with the task's parameters (e.g. "gp" for "gp_l")."""
    return get_task(name).section


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    return _load(_REGISTRY[name])


def _load(spec: str) -> Task:
    module, _, cls = spec.partition(":")
    if not module or not cls:
        raise ValueError(f"{spec!r} is not of the form module:Class")
    return getattr(import_module(module), cls)()


__all__ = ["TASK_NAMES", "Attempt", "Episode", "Task", "get_task", "register_task", "registered_tasks", "task_section"]

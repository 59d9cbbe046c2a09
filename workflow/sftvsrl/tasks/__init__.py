"""Task registry: config name -> Task object. Imports lazily so one task's deps never load another's."""

from __future__ import annotations

from importlib import import_module

from .base import Attempt, Episode, Task

# name -> (module, class, config section holding the task's parameters)
_REGISTRY = {
    "gp_l": ("sftvsrl.tasks.gp", "GeneralPointsTask", "gp"),
    # GP-VL has its own section: its splits add eval_ood_visual, and a study may run both.
    "gp_vl": ("sftvsrl.tasks.gp_vl", "GeneralPointsVisionTask", "gp_vl"),
    "virl_l": ("sftvsrl.tasks.virl", "VirlTask", "virl"),
    # V-IRL-VL has its own section: its splits add eval_ood_visual, and image keys.
    "virl_vl": ("sftvsrl.tasks.virl_vl", "VirlVisionTask", "virl_vl"),
}

TASK_NAMES = tuple(_REGISTRY)


def task_section(name: str) -> str:
    """The config section with the task's parameters (e.g. "gp" for "gp_l")."""
    return _REGISTRY[_check(name)][2]


def get_task(name: str) -> Task:
    module, cls, _ = _REGISTRY[_check(name)]
    return getattr(import_module(module), cls)()


def _check(name: str) -> str:
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return name


__all__ = ["TASK_NAMES", "Attempt", "Episode", "Task", "get_task", "task_section"]

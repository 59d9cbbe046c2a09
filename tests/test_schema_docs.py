"""The schema is the parameter table: every config key in it says what it means (`description`)."""

from __future__ import annotations

from typing import Any

import yaml

from sftvsrl.config import SCHEMA_PATH

COMBINATORS = ("oneOf", "anyOf", "allOf")


def undocumented(schema: dict[str, Any]) -> list[str]:
    """Dotted names of the properties without a non-empty `description`, anywhere in the schema.

    Walks `properties` recursively, and below them `patternProperties`, `items`, object-valued
    `additionalProperties` and the branches of oneOf/anyOf/allOf; the properties of every `$defs`
    entry are named `$defs.<def>.<key>`. A `$ref` is not followed: its target is walked under `$defs`.
    """
    missing: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            name = f"{path}.{key}" if path else key
            if not (isinstance(sub, dict) and str(sub.get("description") or "").strip()):
                missing.append(name)
            walk(sub, name)
        for pattern, sub in node.get("patternProperties", {}).items():
            walk(sub, f"{path}.<{pattern}>")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        items = node.get("items")
        for sub in items if isinstance(items, list) else [items]:
            walk(sub, f"{path}[]")
        for combinator in COMBINATORS:
            for sub in node.get(combinator, []):
                walk(sub, path)

    walk(schema, "")
    for name, sub in schema.get("$defs", {}).items():
        walk(sub, f"$defs.{name}")
    return missing


def test_every_config_key_in_the_schema_has_a_description():
    missing = undocumented(yaml.safe_load(SCHEMA_PATH.read_text()))
    assert not missing, f"{len(missing)} schema keys have no description: {', '.join(missing)}"


def test_the_walker_reports_a_missing_description_at_every_depth():
    """A hand-made schema with one undocumented key per place the walker must reach."""
    doc = {"description": "documented"}
    schema = {
        "$defs": {"sizes": {"type": "object", "properties": {"sft": doc, "rl": {"type": "integer"}}}},
        "properties": {
            "study": {"type": "string", **doc},
            "tasks": {"type": "array"},  # top level, no description
            "model": {
                **doc,
                "properties": {
                    "name": doc,
                    "dtype": {"description": "  "},  # blank counts as missing
                    "init": {**doc, "additionalProperties": {"properties": {"path": {}}}},
                },
            },
            "runs": {**doc, "items": {"properties": {"steps": {"type": "integer"}, "lr": doc}}},
            "cities": {**doc, "patternProperties": {"^c": {"properties": {"size": {}}}}},
            "episodes": {**doc, "oneOf": [{"type": "integer"}, {"properties": {"gp_l": {}}}]},
        },
    }
    assert undocumented(schema) == [
        "tasks",
        "model.dtype",
        "model.init.*.path",
        "runs[].steps",
        "cities.<^c>.size",
        "episodes.gp_l",
        "$defs.sizes.rl",
    ]

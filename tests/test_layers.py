"""The package's import graph points down: configuration at the bottom, tasks and the report above it
and never reaching models or training code (the developers' guide; issue 23)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "sftvsrl"
TRAINING = {"models", "rl", "sft", "rollout", "update_pass", "evaluate", "checkpoints", "compute", "tiny_model"}


def package_imports(path: Path, source: str | None = None) -> set[str]:
    """Modules of the package that a file imports (first component below `sftvsrl`), wherever the import is."""
    found = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: resolve against the file's package
            base = path.parent.relative_to(PACKAGE).parts[
                : len(path.parent.relative_to(PACKAGE).parts) - node.level + 1
            ]
            parts = [*base, *(node.module.split(".") if node.module else [])]
            names = [parts] if node.module else [[*base, a.name] for a in node.names]
        elif (node.module or "").startswith("sftvsrl"):
            names = [node.module.split(".")[1:]] if "." in node.module else [[a.name] for a in node.names]
        else:
            continue
        found.update(".".join(n[:1]) if n and n[0] not in ("tasks", "report") else ".".join(n[:2]) for n in names)
    return found


def test_config_and_names_import_nothing_of_the_package():
    for name in ("config.py", "names.py"):
        assert package_imports(PACKAGE / name) == set(), name


def test_tasks_and_report_never_reach_models_or_training_code():
    for folder in ("tasks", "report"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            reached = {m for m in package_imports(path) if m.split(".")[0] in TRAINING}
            assert not reached, f"{path.relative_to(PACKAGE)} imports {sorted(reached)}"


def test_the_import_check_sees_relative_and_absolute_imports():
    """The check above must be able to fail: a task module that imported training code would be seen."""
    source = "from ..models import load\nfrom sftvsrl.rl import run_rl\nfrom . import base\n"
    assert package_imports(PACKAGE / "tasks" / "probe.py", source) == {"models", "rl", "tasks.base"}

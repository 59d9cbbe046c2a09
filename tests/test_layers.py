"""The package's import graph points down: configuration at the bottom, tasks and the report above it
and never reaching models or training code (the developers' guide; issue 23)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "sftvsrl"
TRAINING = {
    "models",
    "rl",
    "grpo",
    "sft",
    "rollout",
    "turns",
    "model_inputs",
    "sampling",
    "generator",
    "update_pass",
    "evaluate",
    "checkpoints",
    "compute",
    "tiny_model",
}


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


def test_every_task_declares_what_the_report_asks_of_it():
    """Titles, labels and metrics come from the task; an image task (one with the visual-OOD split)
    says what its visual score means and what that split shows, a text task says neither."""
    from sftvsrl.config import schema, section_with_defaults
    from sftvsrl.names import EVAL_OOD_VISUAL
    from sftvsrl.tasks import TASK_NAMES, get_task, task_section

    labels = set()
    for name in TASK_NAMES:
        task = get_task(name)
        labels.add(task.label)
        assert task.primary_metric in ("success_rate", "per_step_accuracy"), name
        assert task.unit.isidentifier(), name  # one word: the report writes "routes", "hands"
        assert task.label in task.title(section_with_defaults(task_section(name), {})), name
        assert task.section in schema()["properties"], name
        shows_images = EVAL_OOD_VISUAL in task.splits
        assert bool(task.visual_metric_title) == bool(task.visual_ood_look) == shows_images, name
    assert len(labels) == len(TASK_NAMES)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports; `tasks.gp`-style names inside tasks/ and report/,
    a name imported from a package's __init__ counted as that package."""
    modules = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found = {m if m in modules else m.split(".")[0] for m in package_imports(path)}
        graph.setdefault(_module_name(path), set()).update(found - {_module_name(path)})
    return graph


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that reach themselves through imports, directly or through others."""
    found = []
    for start in sorted(graph):
        seen, stack = set(), list(graph[start])
        while stack:
            module = stack.pop()
            if module == start:
                found.append(start)
                break
            if module not in seen:
                seen.add(module)
                stack.extend(graph.get(module, ()))
    return found


def test_no_module_of_the_package_reaches_itself_by_import():
    assert not cycles(import_graph())


def test_the_cycle_check_sees_a_cycle_through_a_third_module():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def long_definitions(kinds: tuple[type, ...], limit: int) -> list[str]:
    """Definitions (of `kinds`) in the package longer than `limit` lines (docstring included, decorators not)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kinds) and node.end_lineno - node.lineno >= limit:
                found.append(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def long_functions(limit: int = 60) -> list[str]:
    return long_definitions((ast.FunctionDef, ast.AsyncFunctionDef), limit)


def test_no_function_of_the_package_runs_past_60_lines():
    assert not long_functions()


def test_the_length_check_sees_a_long_function():
    assert long_functions(limit=5)


def long_classes(limit: int = 80) -> list[str]:
    return long_definitions((ast.ClassDef,), limit)


def test_no_class_of_the_package_runs_past_80_lines():
    assert not long_classes()


def test_the_class_check_sees_a_long_class():
    assert long_classes(limit=5)


BROAD = {"Exception", "BaseException"}


def broad_handlers(path: Path, source: str | None = None) -> list[str]:
    """The `except:`, `except Exception` and `except BaseException` clauses of a file (alone or in a tuple):
    they catch a bug with the error they meant, and the CLI's top level alone reports any error."""
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if not isinstance(node, ast.ExceptHandler):
            continue
        caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if node.type is None or any(isinstance(c, ast.Name) and c.id in BROAD for c in caught):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_only_the_cli_catches_any_exception():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "cli.py":
            assert not broad_handlers(path), path.relative_to(PACKAGE)


def test_the_handler_check_sees_bare_and_broad_excepts():
    source = "try:\n    f()\nexcept:\n    pass\ntry:\n    f()\nexcept (OSError, Exception):\n    pass\n"
    source += "try:\n    f()\nexcept ValueError:\n    pass\n"
    assert broad_handlers(Path("probe.py"), source) == ["probe.py:3", "probe.py:7"]


def skipped_imports(path: Path, source: str | None = None) -> list[str]:
    """The package's modules a test file imports through `pytest.importorskip`: a broken module would skip
    its tests instead of failing them."""
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and str(name.value).split(".")[0] == "sftvsrl":
                found.append(f"{path.name}:{node.lineno} {name.value}")
    return found


def test_no_test_skips_when_a_module_of_the_package_fails_to_import():
    tests = Path(__file__).resolve().parent
    assert not [hit for path in sorted(tests.rglob("*.py")) for hit in skipped_imports(path)]


def test_the_skip_check_sees_an_importorskip_of_the_package():
    source = 'import pytest\nrl = pytest.importorskip("sftvsrl.rl")\ntv = pytest.importorskip("torchvision")\n'
    assert skipped_imports(Path("probe.py"), source) == ["probe.py:2 sftvsrl.rl"]

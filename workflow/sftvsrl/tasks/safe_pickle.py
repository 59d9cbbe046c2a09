"""Reading a pickle of plain data without running anything it names.

The V-IRL street-view data maps GPS points to panoramas through a Python pickle (SPEC.md
"Task 2"). A plain `pickle.load` executes whatever callables the file names (a pickle of an
object whose `__reduce__` returns `(os.system, ("...",))` runs that command while loading), so
this module never uses it. `PlainUnpickler.find_class` is the one door through which a pickle
reaches a Python global (a class or a function, also through the copyreg extension codes);
it refuses every global. Plain data needs none: dicts, lists, tuples, sets, str, bytes, int,
float, bool and None have opcodes of their own in every protocol Python 3 writes by default
(only protocols 0-2 spell bytes and sets through a global, and those are refused too).
Persistent ids are refused by `pickle.Unpickler` itself.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

PLAIN_TYPES = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, type(None))


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global (class or function); `module` and `name` say which."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refused global {module}.{name}")
        self.module, self.name = module, name


class PlainUnpickler(pickle.Unpickler):
    """An unpickler of plain data: every global the pickle names is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedGlobal(module, name)


def loads_plain(data: bytes) -> Any:
    """The plain data in a pickle's bytes; raises `pickle.UnpicklingError` (or `RefusedGlobal`) otherwise."""
    value = PlainUnpickler(io.BytesIO(data)).load()
    _check_plain(value)
    return value


def load_plain(path: str | Path) -> Any:
    """The plain data in the pickle file at `path`.

    Raises ValueError naming the file, and the refused global when the pickle names one, for
    anything but plain data, and for a file that cannot be read or is no pickle at all.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the pickle ({err.strerror or err})") from None
    try:
        return loads_plain(data)
    except RefusedGlobal as err:
        raise ValueError(
            f"{path}: refused global {err.module}.{err.name}: the file must hold plain data "
            "(dicts, lists, tuples, str, numbers), and loading it would run code it names"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError) as err:
        raise ValueError(f"{path}: not a readable pickle of plain data ({type(err).__name__}: {err})") from None


def _check_plain(value: Any) -> None:
    """Raise pickle.UnpicklingError if a value reached anything but plain data (defence in depth:
    without globals, nothing else can be built)."""
    todo = [value]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if type(v) not in PLAIN_TYPES:
            raise pickle.UnpicklingError(f"a value of type {type(v).__name__} is not plain data")
        if isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            todo.extend(v)

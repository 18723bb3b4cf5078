"""What an object keeps: everything reachable from it, for tests that a structure holds no key
presses once they are over."""

from __future__ import annotations

import gc
import types


def reachable(root: object) -> list[str]:
    """Everything reachable from `root` (not into classes, modules or functions), as values and
    type names in the order the garbage collector's referents give them."""
    out: list[str] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, int | float | str | bytes):
            out.append(repr(obj))
            continue
        if id(obj) in seen:
            out.append("<again>")
            continue
        seen.add(id(obj))
        if isinstance(
            obj, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType
        ):
            out.append(f"<{type(obj).__name__}>")
            continue
        out.append(type(obj).__name__)
        stack.extend(reversed(gc.get_referents(obj)))
    return out

"""Shipping the source text of a hither function defined in a notebook or interactive session.

A worker finds a function by importing its module or loading its script again.
A function defined in Jupyter or IPython has neither (its module is a
``__main__`` without a file), but IPython keeps each cell's source in
:mod:`linecache`. So its source is shipped, with what it uses from the
notebook: imports, literal constants and the notebook's own functions and
classes. Anything else is refused with a :class:`ShipError`; nothing is pickled.
"""

import ast
import dis
import inspect
import linecache
import math
import os
import sys
import textwrap
import types
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

_FIX = ("pass it as an argument of .run(), define or import it inside the function, "
        "or move the function into a .py module and import it")
# instructions that name a global: in function bodies, and in module and class bodies (decorators, bases, ...)
_GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"}
_COMPREHENSIONS = {"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"}  # run where they stand (Python < 3.12)


class ShipError(TypeError):
    """A notebook function cannot be shipped to a worker as source text; the message says what to do."""


def needs_shipping(fn: Any) -> bool:
    """True when fn (a plain Python function) is defined in __main__ and no script file a
    worker could load holds it (notebook, IPython, `python -c`, a script on stdin, a cell of
    an IPython script)."""
    if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__":
        return False
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not (isinstance(file, str) and os.path.isfile(file)):  # `python -` sets __file__ to '<stdin>'
        return True
    # a script that defines it by exec or as an IPython cell (`ipython script.ipy`): no file holds it
    return not os.path.isfile(fn.__code__.co_filename)


def shipped_source(fn: Callable, name: str) -> str:
    """Python module source text that, executed as a fresh module named '__hither_main__'
    (with hither_fs importable), defines `name` at top level (the hither function object
    or the plain function) together with every global definition it needs. Never a pickle.

    The text depends only on the definitions and values used, so its hash identifies the code.
    """
    shipper = _Shipper(fn.__globals__, name)
    shipper.visit(name, fn, name)
    return shipper.text()


class _Shipper:
    def __init__(self, namespace: Dict[str, Any], root: str):
        self.ns, self.root = namespace, root
        self.seen: Set[str] = set()
        self.imports: Set[str] = set()
        self.constants: Set[str] = set()  # "NAME = <literal>": sorted as text, they are sorted by name
        # name -> (source, the names its definition needs defined first), in discovery post-order: root last
        self.defs: Dict[str, Tuple[str, List[str]]] = {}

    def error(self, name: str, user: str, what: str, fix: str = _FIX) -> ShipError:
        via = "" if user == self.root else " (through {}())".format(user)
        return ShipError("hither function {!r} uses the global {!r}{}, {}: {}".format(
            self.root, name, via, what, fix))

    def visit(self, name: str, obj: Any, user: str) -> None:
        if name in self.seen:
            return
        self.seen.add(name)
        if isinstance(obj, types.ModuleType):
            if sys.modules.get(obj.__name__) is not obj:
                raise self.error(name, user, "a module that a worker cannot import by its name {!r}".format(
                    obj.__name__))
            self.imports.add("import " + obj.__name__ + ("" if obj.__name__ == name else " as " + name))
            return
        literal = _literal(obj)
        if literal is not None:
            self.constants.add("{} = {}".format(name, literal))
            return
        target = _unwrap(obj)  # a hither function (or other functools wrapper) -> the function it wraps
        if isinstance(target, (types.FunctionType, type)) and target.__module__ == "__main__":
            return self.define(name, obj, target, user)
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if isinstance(module, str) and isinstance(qualname, str) and module != "__main__":
            if getattr(sys.modules.get(module), qualname, None) is not obj:
                raise self.error(name, user, "{} {}.{}, which a worker cannot import back with `from {} import {}`"
                                 .format(_type_name(obj), module, qualname, module, qualname))
            self.imports.add("from {} import {}".format(module, qualname) + ("" if qualname == name else " as " + name))
            return
        raise self.error(name, user, "an object of type {}, which cannot be shipped to a worker as source text"
                         .format(_type_name(obj)))

    def define(self, name: str, obj: Any, target: Any, user: str) -> None:
        """Ship a function or class defined in the notebook: its source, after what it needs."""
        if target.__qualname__ != target.__name__:
            raise self.error(name, user, "a {} defined inside a function or class ({})".format(
                _type_name(target), target.__qualname__), "define it at the top level of a cell")
        if target.__name__ != name:
            if self.ns.get(target.__name__) is obj:  # `g = helper`: ship helper, then the alias
                self.visit(target.__name__, obj, user)
                self.defs[name] = ("{} = {}".format(name, target.__name__), [target.__name__])
                return
            raise self.error(name, user, "a lambda or renamed function, whose source does not define {!r}".format(
                name), "define it with `def {}(...):` at the top level of a cell".format(name))
        source = self.source(name, target, user)
        at_definition, at_call = _global_names(source)
        for dep in sorted(at_definition | at_call):
            if dep in self.ns and not (dep.startswith("__") and dep.endswith("__")):
                self.visit(dep, self.ns[dep], name)
        self.defs[name] = (source, sorted(at_definition))

    def source(self, name: str, target: Any, user: str) -> str:
        who = ("hither function {!r}".format(name) if name == self.root
               else "{!r} (used by hither function {!r})".format(name, self.root))
        if isinstance(target, type):
            found = _class_sources(target)
            if len(found) > 1:
                raise ShipError("{}: class {!r} is defined differently in several notebook cells and has no method "
                                "to tell which one is current: restart the kernel and run the notebook again, or "
                                "move the class into a .py module and import it".format(who, name))
            if found:
                return found.pop()
            raise ShipError("{}: the source of class {!r} cannot be found, so a worker cannot see it: move the class "
                            "into a .py module and import it".format(who, name))
        try:
            return textwrap.dedent(inspect.getsource(target))
        except (OSError, TypeError):
            filename = target.__code__.co_filename
        if filename in ("<stdin>", "<string>"):
            raise ShipError("{} was defined in a script read from standard input (or `python -c`), whose source "
                            "a worker cannot see: save the script to a file and run `python script.py`".format(who))
        raise ShipError("{} was defined in {}, whose source cannot be found, so a worker cannot see it: move the "
                        "function into a .py module and import it".format(who, filename)) from None

    def text(self) -> str:
        order: List[str] = []
        placing: Set[str] = set()

        def place(name: str) -> None:  # after what its definition needs (decorators, bases, defaults)
            if name in placing or name not in self.defs:
                return
            placing.add(name)
            for dep in self.defs[name][1]:
                place(dep)
            order.append(name)
        for name in self.defs:
            place(name)
        head = ["# shipped by hither_fs from a notebook or interactive session: hither function {!r} "
                "and what it uses".format(self.root)]
        head += ["\n".join(sorted(block)) for block in (self.imports, self.constants) if block]
        return "\n\n\n".join(["\n\n".join(head)] + [self.defs[n][0].strip("\n") for n in order]) + "\n"


def _unwrap(obj: Any) -> Any:
    try:
        return inspect.unwrap(obj)
    except Exception:  # a cycle of __wrapped__, or an object whose attributes raise
        return obj


def _type_name(obj: Any) -> str:
    kind = type(obj)
    if isinstance(obj, type) or kind.__module__ in ("builtins", "__main__"):
        return "class" if isinstance(obj, type) else kind.__qualname__
    return "{}.{}".format(kind.__module__, kind.__qualname__)


def _literal(value: Any, depth: int = 0) -> Optional[str]:
    """Source text that evaluates to value, a literal of builtin types; None for anything else."""
    kind = type(value)
    if depth > 100:  # a container that contains itself
        return None
    if value is None or kind in (bool, int, str, bytes):
        try:
            return repr(value)
        except ValueError:  # an int too long to print
            return None
    if kind in (float, complex):  # nan and inf have no literal: float('nan'), complex('(inf+1j)')
        finite = all(map(math.isfinite, (value.real, value.imag)))
        return repr(value) if finite else "{}({!r})".format(kind.__name__, repr(value))
    if kind is dict:
        items = [(_literal(k, depth + 1), _literal(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ", ".join("{}: {}".format(k, v) for k, v in items) + "}"
    if kind not in (tuple, list, set, frozenset):
        return None
    elements = [_literal(v, depth + 1) for v in value]
    if None in elements:
        return None
    if kind in (set, frozenset):
        elements.sort()  # iteration order of a set varies between processes; its text must not
    text = ", ".join(elements)
    if kind is tuple:
        return "({},)".format(text) if len(elements) == 1 else "({})".format(text)
    if kind is list:
        return "[{}]".format(text)
    text = "{" + text + "}" if elements else ""
    return text if kind is set and text else "{}({})".format(kind.__name__, text)


def _global_names(source: str) -> Tuple[Set[str], Set[str]]:
    """The names a definition's source looks up as globals: (when it is defined, when it is called).

    Read from the compiled code, not the syntax tree: attributes (``obj.data``) and
    local variables are not globals, even when a global of the same name exists.
    """
    names: Tuple[Set[str], Set[str]] = (set(), set())

    def walk(code: types.CodeType, now: bool) -> None:
        names[0 if now else 1].update(i.argval for i in dis.get_instructions(code) if i.opname in _GLOBAL_OPS)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):  # class bodies and comprehensions run at once; functions later
                walk(const, now and (not const.co_flags & inspect.CO_OPTIMIZED or const.co_name in _COMPREHENSIONS))
    walk(compile(source, "<hither_fs shipping>", "exec"), True)
    return names


def _class_sources(cls: type) -> Set[str]:
    """The distinct source texts that can be cls's definition.

    ``inspect.getsource`` cannot find a notebook class (it looks for the file of
    ``__main__``), so look in the cell of one of its methods, or else in every
    interactive cell (linecache entries without a modification time).
    From Python 3.13 on, ``cls.__firstlineno__`` narrows the search.
    """
    methods = []
    for attr in vars(cls).values():
        attr = getattr(attr, "__func__", attr)  # classmethod, staticmethod
        attr = getattr(attr, "fget", attr)  # property
        code = getattr(attr, "__code__", None)
        if code is not None and getattr(attr, "__qualname__", "").startswith(cls.__qualname__ + "."):
            methods.append((code.co_filename, code.co_firstlineno))
    first = getattr(cls, "__firstlineno__", None)
    cells = sorted((f, None) for f, entry in list(linecache.cache.items()) if len(entry) == 4 and entry[1] is None)
    for candidates in (methods, cells):
        found = set()
        for filename, line in candidates:
            lines = linecache.getlines(filename)
            try:
                tree = ast.parse("".join(lines))
            except (SyntaxError, ValueError):
                continue
            for node in tree.body:
                start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                if (isinstance(node, ast.ClassDef) and node.name == cls.__name__ and first in (None, start)
                        and (line is None or node.lineno <= line <= node.end_lineno)):
                    found.add(textwrap.dedent("".join(lines[start - 1:node.end_lineno])))
        if found:
            return found
    return set()

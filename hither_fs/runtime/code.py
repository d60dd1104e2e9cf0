"""Finding a job's Python function from the ``function`` part of its spec.

A function defined in an importable module is imported by module name, with
the directory it was imported from put on ``sys.path``. A function defined in
a script (the submitter's ``__main__``) is found by loading that script under
another name. Scripts like the examples in the docs submit jobs at top level
with no ``if __name__ == "__main__":`` guard, so while a script is being
loaded this way the first hither_fs call that would start work (a ``.run()``,
a handler, a ``Config`` block, ``hi.wait()``) stops the load: everything
defined above that line - the functions - is in place, and nothing below it
runs.

Standard library only: this module also runs inside job containers.
"""

import importlib
import importlib.util
import os
import sys
import threading
from typing import Any, Callable, Dict, Tuple

_state = threading.local()


class ScriptLoadStop(BaseException):
    """Raised inside a script being loaded for its functions, at its first job-starting call."""


def loading_script() -> bool:
    return bool(getattr(_state, "depth", 0))


def stop_if_loading_script(what: str) -> None:
    """Called by job-starting APIs: end a script load before ``what`` happens."""
    if loading_script():
        raise ScriptLoadStop(what)


class FunctionNotFoundError(Exception):
    pass


def _load_script(path: str) -> Any:
    if not os.path.isfile(path):
        raise FunctionNotFoundError("the script {} that defined the function no longer exists".format(path))
    spec = importlib.util.spec_from_file_location("__hither_main__", path)
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        spec.loader.exec_module(module)
    except ScriptLoadStop:
        pass
    finally:
        _state.depth -= 1
    return module


def function_in_code_env(fspec: Dict[str, Any], code: Dict[str, Any], code_dir: str) -> Dict[str, Any]:
    """The ``function`` entry of a spec, pointed at the job's unpacked code environment.

    ``code`` is the spec's ``code`` entry (see :mod:`hither_fs.codeenv`): the
    module name and file of the function inside the environment, whose top
    directory is the one import root. The file must lie inside it.
    """
    rel = code.get("file")
    if (not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise FunctionNotFoundError("unsafe function file {!r} in the job's code environment: it must be a "
                                    "relative path inside the environment, without '..'".format(rel))
    return dict(fspec, module=code["module"], file=os.path.join(code_dir, rel),
                import_root=code_dir)


def import_function(fspec: Dict[str, Any]) -> Tuple[Callable, Any]:
    """Return ``(callable, defined_version)`` for a spec's ``function`` entry."""
    name = fspec["name"]
    module_name = fspec["module"]
    if module_name == "__main__":
        module = _load_script(fspec["file"])
        where = "script {}".format(fspec["file"])
    else:
        root = fspec.get("import_root")
        if root and root not in sys.path:
            sys.path.insert(0, root)
        module = importlib.import_module(module_name)
        where = "module {}".format(module_name)
    obj = getattr(module, name, None)
    if obj is None:
        raise FunctionNotFoundError(
            "function {!r} was not found at the top level of {} (functions must be defined "
            "at module level, above any top-level code that submits jobs)".format(name, where))
    return getattr(obj, "__wrapped__", obj), getattr(obj, "version", None)

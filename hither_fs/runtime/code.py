"""Finding a job's Python function from the ``function`` part of its spec.

A function defined in an importable module is imported by module name, with
the directory it was imported from put on ``sys.path``. A function defined in
a script (the submitter's ``__main__``) is found by loading that script under
another name. Either way the code that runs is the code the job was
submitted with: the spec names a store blob holding the source of the
function's file as it was at submission (``source``), and the module is
compiled from those bytes, checked against their hash, never from the file as
it is now. A function from a notebook has no file: its shipped source (see
:mod:`hither_fs.shipping`) is loaded the same way. Scripts like the examples in the docs submit jobs at top level
with no ``if __name__ == "__main__":`` guard, so while a script is being
loaded this way the first hither_fs call that would start work (a ``.run()``,
a handler, a ``Config`` block, ``hi.wait()``) stops the load: everything
defined above that line - the functions - is in place, and nothing below it
runs.

Standard library only: this module also runs inside job containers.
"""

import importlib
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import threading
import types
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from .store import BlobMissingError, Store

#: The name a submitter's script (or a notebook's shipped code) is loaded under.
SCRIPT_MODULE = "__hither_main__"
#: The file name in tracebacks of a notebook's shipped code.
SHIPPED_NAME = "<shipped from a notebook>"

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


#: Submitted sources read in this process (and their compiled code), by sha1: a worker reads
#: one before forking a job's process, a warm runner for all the jobs of its function.
_preloaded: "OrderedDict[str, Tuple[bytes, Dict[str, Any]]]" = OrderedDict()
_PRELOAD_MAX = 64


def preload(fspec: Dict[str, Any], store: Store) -> None:
    """Read and compile a job's submitted source here, so the processes forked from this
    one inherit it (called by a worker before it forks a job)."""
    source = submitted_source(fspec, store)
    if source is not None:
        _compiled(fspec["source"], source, fspec.get("file") or SHIPPED_NAME)


def _compiled(sha1: Optional[str], source: bytes, filename: str) -> Any:
    codes = _preloaded[sha1][1] if sha1 in _preloaded else {}
    code = codes.get(filename)
    if code is None:
        code = codes[filename] = compile(source, filename, "exec", dont_inherit=True)
    return code


def _remember_source(filename: str, source: bytes) -> None:
    """Tracebacks show the submitted lines, even after the file changed (mtime None: kept)."""
    text = source.decode("utf-8", "replace")
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)


#: Scripts loaded in this process, by (source sha1, file): a warm runner loads a script
#: once for all the jobs of its functions, as it imports a module once.
_scripts: "OrderedDict[Tuple[str, Optional[str]], Any]" = OrderedDict()


def _load_script(path: Optional[str], source: Optional[bytes], sha1: Optional[str] = None,
                 argv: Optional[List[str]] = None) -> Any:
    key = (sha1, path, tuple(argv) if isinstance(argv, list) else None)
    if sha1 and key in _scripts and sys.modules.get(SCRIPT_MODULE) is _scripts[key]:
        _scripts.move_to_end(key)
        return _scripts[key]
    module = _run_script(path, source, sha1, argv)
    if sha1:
        _scripts[key] = module
        while len(_scripts) > _PRELOAD_MAX:
            _scripts.popitem(last=False)
    return module


def _run_script(path: Optional[str], source: Optional[bytes], sha1: Optional[str],
                argv: Optional[List[str]] = None) -> Any:
    """Run a submitted script as a module, up to its first job-starting line, with the
    command line it was run with (``argv``, as submitted: its top level may parse it)."""
    if source is None:  # a spec written before sources were stored
        if not path or not os.path.isfile(path):
            raise FunctionNotFoundError("the script {} that defined the function no longer exists".format(path))
        with open(path, "rb") as f:
            source = f.read()
    filename = path or SHIPPED_NAME
    module = types.ModuleType(SCRIPT_MODULE)
    module.__file__ = filename
    module.__hither_source__ = sha1  # jobs it submits in turn take these bytes along
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        module.__hither_argv__ = argv  # and this command line
    else:
        argv = None
    if path:
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
    _remember_source(filename, source)
    code = _compiled(sha1, source, filename)
    sys.modules[SCRIPT_MODULE] = module  # dataclasses and the like look their module up
    _state.depth = getattr(_state, "depth", 0) + 1
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = list(argv)
    try:
        exec(code, module.__dict__)
    except ScriptLoadStop:
        pass
    except SystemExit as exc:
        raise RuntimeError("the script {} exited (SystemExit: {}) while its top level ran again in the job, "
                           "before its first job-starting line: put what may exit (argument parsing, checks) "
                           "under `if __name__ == '__main__':`".format(filename, exc.code)) from None
    finally:
        sys.argv = saved_argv
        _state.depth -= 1
    return module


class _SubmittedSourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a module from the bytes it had at submission (never from a ``.pyc``, never
    writing one: those belong to the file as it is now)."""

    def __init__(self, fullname: str, path: str, source: bytes, sha1: Optional[str]):
        super().__init__(fullname, path)
        self.source, self.sha1 = source, sha1

    def get_source(self, fullname: str) -> str:
        return self.source.decode("utf-8", "replace")

    def get_code(self, fullname: str) -> Any:
        _remember_source(self.path, self.source)
        return _compiled(self.sha1, self.source, self.path)


def _import_submitted(module_name: str, path: str, source: bytes, sha1: Optional[str] = None) -> Any:
    parent, _, child = module_name.rpartition(".")
    if parent:
        importlib.import_module(parent)  # its __init__ may import the module itself, from the file as it is now
    existing = sys.modules.get(module_name)
    if existing is not None and _same_source(existing, source):
        return existing
    package = os.path.basename(path) == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        module_name, path, loader=_SubmittedSourceLoader(module_name, path, source, sha1),
        submodule_search_locations=[os.path.dirname(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    module.__hither_source__ = sha1  # jobs it submits in turn take these bytes along
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _same_source(module: Any, source: bytes) -> bool:
    """Whether an imported module was made from these bytes (else the job's code replaces it)."""
    loader = getattr(module, "__loader__", None)
    if isinstance(loader, _SubmittedSourceLoader):  # made from the bytes of an earlier job: those count
        return loader.source == source
    try:
        with open(module.__file__, "rb") as f:
            return f.read() == source
    except (OSError, TypeError, AttributeError):
        return False


def submitted_source(fspec: Dict[str, Any], store: Optional[Store]) -> Optional[bytes]:
    """The source the job's function file had at submission; None for specs that predate it."""
    sha1 = fspec.get("source")
    if not sha1 or store is None:
        return None
    if sha1 in _preloaded:
        _preloaded.move_to_end(sha1)
        return _preloaded[sha1][0]
    try:
        source = store.get_bytes(sha1)
    except BlobMissingError:
        raise FunctionNotFoundError(
            "the code of function {!r} as it was submitted (store blob {}) is gone from the root's store; "
            "submit the job again".format(fspec.get("name"), sha1)) from None
    _preloaded[sha1] = (source, {})
    while len(_preloaded) > _PRELOAD_MAX:
        _preloaded.popitem(last=False)
    return source


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
                import_root=code_dir, source=None)


def import_function(fspec: Dict[str, Any], store: Optional[Store] = None) -> Tuple[Callable, Any]:
    """Return ``(callable, defined_version)`` for a spec's ``function`` entry; ``store``
    holds the submitted source it names."""
    name = fspec["name"]
    module_name = fspec["module"]
    source = submitted_source(fspec, store)
    if module_name == "__main__":
        module = _load_script(fspec.get("file"), source, fspec.get("source"), fspec.get("argv"))
        where = "script {}".format(fspec.get("file") or "shipped from a notebook")
    else:
        root = fspec.get("import_root")
        if root and root not in sys.path:
            sys.path.insert(0, root)
        if source is None:
            module = importlib.import_module(module_name)
        else:
            module = _import_submitted(module_name, fspec["file"], source, fspec.get("source"))
        where = "module {}".format(module_name)
    obj = getattr(module, name, None)
    if obj is None:
        raise FunctionNotFoundError(
            "function {!r} was not found at the top level of {} (functions must be defined "
            "at module level, above any top-level code that submits jobs)".format(name, where))
    return getattr(obj, "__wrapped__", obj), getattr(obj, "version", None)

"""``@hi.function`` and ``@hi.container``: the registry of hither functions."""

import functools
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union, overload

from .codeenv import check_patterns
from .runtime.code import SHIPPED_NAME, stop_if_loading_script
from .shipping import needs_shipping
from .submit import submit, submit_many

if TYPE_CHECKING:  # job.py imports this module's users; the annotation needs no import at run time
    from .job import Job

_registry: Dict[str, "HitherFunction"] = {}

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class HitherFunction(Generic[R]):
    """A Python function registered under a name and a version.

    Calling it runs the function here and now (no job, no cache);
    ``.run(**kwargs)`` makes a :class:`~hither_fs.Job` under the current
    :class:`~hither_fs.Config`.
    """

    def __init__(self, fn: Callable[..., R], name: str, version: str,
                 local_modules: Optional[List[str]] = None,
                 additional_files: Optional[List[str]] = None):
        functools.update_wrapper(self, fn)
        self.name = name
        self.version = version
        self.container: Optional[str] = getattr(fn, "_hither_container", None)
        self.container_gpu: bool = getattr(fn, "_hither_container_gpu", False)
        # given to @hi.function (the outer decorator) or, hither's way, by @hi.local_modules /
        # @hi.additional_files below it: the outermost one counts, as for @hi.container
        self.local_modules = list(local_modules if local_modules is not None
                                  else getattr(fn, "_hither_local_modules", None) or [])
        self.additional_files = list(additional_files if additional_files is not None
                                     else getattr(fn, "_hither_additional_files", None) or [])
        self._location: Optional[Tuple[Any, Dict[str, Any]]] = None  # (what it was worked out for, location)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        stop_if_loading_script("a direct call of {}".format(self.name))
        return self.__wrapped__(*args, **kwargs)  # type: ignore[attr-defined]

    def run(self, **kwargs: Any) -> "Job[R]":
        return submit(self, kwargs)

    def map(self, items: Iterable[Mapping[str, Any]], **common: Any) -> "List[Job[R]]":
        """Submit one job per item at once: ``f.map([dict(x=1), dict(x=2)], y=0)`` is
        ``[f.run(x=1, y=0), f.run(x=2, y=0)]``, only much faster (thousands of jobs a second).

        ``items`` is a list (or any iterable) of dicts, each the keyword arguments of
        one job; ``common`` keyword arguments go to every job as they are. Nothing is
        zipped or broadcast by guessing: an argument that is itself a list is simply
        given in the dict (``dict(xs=[1, 2])``) or in ``common``, so a list-valued
        argument can never be taken for a list of values. ``f.map([dict(x=x) for x in
        range(1000)])`` is the zip.

        Returns the jobs in the order of the items, each its own job (own id, cache key,
        record), exactly as ``.run()`` makes it: a cache hit is answered from the cache,
        a key another job computes just now is that job (two equal items of one call
        give one job), and jobs are fine as arguments (pipelines).

        Every item is checked and encoded before any job is written: an item that is
        not a dict, a missing or unknown argument, one given both in an item and in
        ``common``, or a value that cannot be a job argument raises, naming the item
        (``item 3: ...``), and no job of the call is in the root.
        """
        return submit_many(self, items, common)

    def location(self) -> Dict[str, Any]:
        """How a worker finds this function again: module, file, import root. Worked out
        once per code object (a reload makes a new one) and working directory."""
        code = getattr(self.__wrapped__, "__code__", None)  # type: ignore[attr-defined]
        key = (code, os.getcwd())
        if code is None or self._location is None or self._location[0] != key:
            self._location = (key, self._find_location())
        return dict(self._location[1])

    def _find_location(self) -> Dict[str, Any]:
        fn = self.__wrapped__
        module = fn.__module__
        shipped = needs_shipping(fn) or getattr(sys.modules.get(module), "__file__", None) == SHIPPED_NAME
        try:
            file = "" if shipped else os.path.abspath(inspect.getsourcefile(fn) or "")
        except TypeError:
            file = ""
        import_root = None
        if module not in ("__main__", "__hither_main__") and file:
            levels = module.count(".") + (1 if os.path.basename(file) == "__init__.py" else 0)
            import_root = os.path.dirname(file)
            for _ in range(levels):
                import_root = os.path.dirname(import_root)
        if module == "__hither_main__":
            module = "__main__"
        return {"name": self.name, "version": self.version, "module": module,
                "file": file or None, "import_root": import_root}

    def check_importable(self) -> None:
        """Raise unless a worker process could import this function (or gets its source
        shipped: see :mod:`hither_fs.shipping`)."""
        fn = self.__wrapped__
        if needs_shipping(fn):
            return
        module = sys.modules.get(fn.__module__)
        if getattr(module, self.name, None) is not self or not getattr(module, "__file__", None):
            raise TypeError(
                "hither function {!r} must be defined at the top level of a module or script file "
                "to run outside this process (it was defined in {}.{})".format(
                    self.name, fn.__module__, fn.__qualname__))

    def __repr__(self):
        return "<hither function {} {}>".format(self.name, self.version)


def _identity(fn: Callable):
    if needs_shipping(fn):  # a notebook cell run again after an edit redefines its function
        return "<interactive>", fn.__qualname__
    try:
        file = os.path.abspath(inspect.getsourcefile(fn) or "")
    except TypeError:
        file = ""
    return file, fn.__qualname__


class DuplicateFunctionException(ValueError):
    """Two different functions were registered under one name (hither's name for it; it is a
    ``ValueError``)."""


def _check_names(value: Any, label: str, name: str) -> None:
    if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
        raise TypeError("hither function {!r}: {} must be a list of strings".format(name, label))
    if label == "additional_files" and value:
        check_patterns(value, name)


def function(name: str, version: str, container: Optional[str] = None, *, local_modules: Optional[List[str]] = None,
             additional_files: Optional[List[str]] = None) -> Callable[[Callable[..., R]], HitherFunction[R]]:
    """Register a function under ``name`` (which must be its Python name) and ``version``.

    ``container`` (hither's spelling) is the same as ``@hi.container(image)`` stacked on it.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError("hither function name must be a Python identifier, not {!r}".format(name))
    if not isinstance(version, str) or not version:
        raise ValueError("hither function {!r}: version must be a non-empty string, not {!r}".format(name, version))
    _check_names(local_modules, "local_modules", name)
    _check_names(additional_files, "additional_files", name)
    if container is not None:
        _check_image(container)

    def decorate(fn: Callable[..., R]) -> HitherFunction[R]:
        if isinstance(fn, HitherFunction):
            raise TypeError("@hi.function applied twice to {!r}".format(name))
        if not callable(fn):
            raise TypeError("@hi.function({!r}) must decorate a function".format(name))
        if fn.__name__ != name:
            raise ValueError("hither function name {!r} does not match the Python function's name {!r}"
                             .format(name, fn.__name__))
        hf = HitherFunction(fn, name, version, local_modules, additional_files)
        if container is not None:
            _set_container(hf, container, False)
        existing = _registry.get(name)
        if existing is not None and _identity(existing.__wrapped__) != _identity(fn):
            raise DuplicateFunctionException(
                "two hither functions are registered under the name {!r}: version {} in {} "
                "and version {} in {}; give one of them another name".format(
                    name, existing.version, _identity(existing.__wrapped__)[0] or "?",
                    version, _identity(fn)[0] or "?"))
        _registry[name] = hf
        return hf
    return decorate


def container(image: str, *, gpu: bool = False) -> Callable[[F], F]:
    """Declare the container image a function runs in when ``Config(container=True)``.

    ``image`` is a ``docker://``, ``library://`` or ``oras://`` URL, a ``.sif``
    file or a sandbox directory. Works above or below ``@hi.function``.
    ``gpu=True`` passes the host's NVIDIA GPUs into the container (``--nv``).
    """
    _check_image(image)

    def decorate(fn: F) -> F:
        _set_container(fn, image, gpu)
        return fn
    return decorate


def _check_image(image: Any) -> None:
    if not isinstance(image, str) or not image.strip():
        raise ValueError("@hi.container needs an image URL or path, not {!r}".format(image))


def _set_container(fn: Any, image: str, gpu: bool) -> None:
    if isinstance(fn, HitherFunction):
        fn.container, fn.container_gpu = image, bool(gpu)
    else:
        fn._hither_container, fn._hither_container_gpu = image, bool(gpu)


def local_modules(paths: List[str]) -> Callable[[F], F]:
    """hither's decorator for ``@hi.function(..., local_modules=paths)``: directories or ``.py``
    files outside the function's directory that its code environment takes along. Works above
    or below ``@hi.function``; the outermost setting counts."""
    return _setting("local_modules", paths)


def additional_files(patterns: List[str]) -> Callable[[F], F]:
    """hither's decorator for ``@hi.function(..., additional_files=patterns)``: file name patterns
    (``fnmatch``) of non-Python files of the function's directory tree that its code environment
    takes along. Works above or below ``@hi.function``; the outermost setting counts."""
    return _setting("additional_files", patterns)


def _setting(label: str, value: List[str]) -> Callable[[F], F]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError("@hi.{} needs a list of strings, not {!r}".format(label, value))

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError("@hi.{} must decorate a function, not {!r}".format(label, fn))
        _check_names(value, label, getattr(fn, "name", None) or getattr(fn, "__name__", "?"))
        if isinstance(fn, HitherFunction):
            setattr(fn, label, list(value))
        else:
            setattr(fn, "_hither_" + label, list(value))
        return fn
    return decorate


def get_function(name: str) -> HitherFunction[Any]:
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise LookupError("no hither function named {!r} is registered (registered: {})".format(
            name, known)) from None


def run(name: str, **kwargs: Any) -> "Job[Any]":
    """Run a registered hither function by name: ``hi.run('add', x=1, y=2)``."""
    stop_if_loading_script("hi.run({!r})".format(name))
    return get_function(name).run(**kwargs)


@overload
def map(function: HitherFunction[R], items: Iterable[Mapping[str, Any]], **common: Any) -> "List[Job[R]]": ...


@overload
def map(function: str, items: Iterable[Mapping[str, Any]], **common: Any) -> "List[Job[Any]]": ...


def map(function: Union[str, HitherFunction[Any]], items: Iterable[Mapping[str, Any]], **common: Any) -> "List[Job[Any]]":
    """Submit one job per item of a hither function (given, or registered under a name):
    ``hi.map('add', [dict(x=1), dict(x=2)], y=0)`` is ``add.map([dict(x=1), dict(x=2)], y=0)``
    (see :meth:`HitherFunction.map`)."""
    stop_if_loading_script("hi.map()")
    fn = function if isinstance(function, HitherFunction) else get_function(function)
    return fn.map(items, **common)

"""The ``hither_fs`` package as seen from inside a job's container.

A container image only needs Python 3 and numpy: hither_fs itself is not
installed there. Yet the user's module says ``import hither_fs as hi`` and
decorates its functions, so something must answer to that name. This file
is copied into the root as ``code/runtime/<sha1>/hither_fs/__init__.py``,
next to a copy of :mod:`hither_fs.runtime`, and that directory is put first
on the container's ``PYTHONPATH``.

It is a light stand-in, not the real API: ``@hi.function`` and
``@hi.container`` return objects that carry ``__wrapped__`` and ``version``
(what :func:`hither_fs.runtime.code.import_function` needs), ``hi.File`` is
the real one, ``hi.Config`` and the handlers are inert. Everything that would
start work calls :func:`~hither_fs.runtime.code.stop_if_loading_script` first,
exactly like the real API, so a script that submits jobs at top level is
loaded up to that line and no further. Starting jobs from inside a container
job is not supported and says so.

Standard library and numpy only, Python 3.8+ (absolute imports, because the
same file is also importable on the host as ``hither_fs.runtime.standin``).
"""

import functools
from typing import Any, Callable, List, Optional

from hither_fs.runtime.code import stop_if_loading_script
from hither_fs.runtime.serialization import File

__version__ = "container-stand-in"
IN_CONTAINER = True


class NotAvailableInContainerError(RuntimeError):
    """Something of the full hither_fs API was used inside a container job."""


def _not_here(what: str) -> NotAvailableInContainerError:
    return NotAvailableInContainerError(
        "{} is not available inside a container job: the image runs a light stand-in of hither_fs "
        "that can run the job's function but not start other jobs".format(what))


class JobError(Exception):
    pass


class JobCancelledError(JobError):
    pass


class JobTimeoutError(JobError):
    pass


class UpstreamJobError(JobError):
    pass


class WorkerLostError(JobError):
    pass


class JobNotFinishedError(Exception):
    pass


JobCancelledException = JobCancelledError  # hither's spellings (see hither_fs.compat)


class DuplicateFunctionException(ValueError):
    pass


class RootError(Exception):
    pass


class HitherFunction:
    """What ``@hi.function`` returns here: the function, its name and version."""

    def __init__(self, fn: Callable, name: str, version: str,
                 local_modules: Optional[List[str]] = None,
                 additional_files: Optional[List[str]] = None):
        functools.update_wrapper(self, fn)
        self.name = name
        self.version = version
        self.container = getattr(fn, "_hither_container", None)
        self.container_gpu = getattr(fn, "_hither_container_gpu", False)
        self.local_modules = list(local_modules if local_modules is not None
                                  else getattr(fn, "_hither_local_modules", None) or [])
        self.additional_files = list(additional_files if additional_files is not None
                                     else getattr(fn, "_hither_additional_files", None) or [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        stop_if_loading_script("a direct call of {}".format(self.name))
        return self.__wrapped__(*args, **kwargs)

    def run(self, **kwargs: Any) -> Any:
        stop_if_loading_script("{}.run()".format(self.name))
        raise _not_here("{}.run()".format(self.name))

    def __repr__(self):
        return "<hither function {} {} (in a container)>".format(self.name, self.version)


def function(name: str, version: str, container: Optional[str] = None, *,
             local_modules: Optional[List[str]] = None,
             additional_files: Optional[List[str]] = None) -> Callable[[Callable], HitherFunction]:
    def decorate(fn: Callable) -> HitherFunction:
        if getattr(fn, "__name__", None) != name:
            raise ValueError("hither function name {!r} does not match the Python function's name {!r}"
                             .format(name, getattr(fn, "__name__", None)))
        hf = HitherFunction(fn, name, version, local_modules, additional_files)
        if container is not None:
            hf.container, hf.container_gpu = container, False
        return hf
    return decorate


def _setting(label: str, value: List[str]) -> Callable:
    """hither's @hi.local_modules / @hi.additional_files (checked on the host already)."""
    def decorate(fn):
        setattr(fn, label if isinstance(fn, HitherFunction) else "_hither_" + label, list(value))
        return fn
    return decorate


def local_modules(paths: List[str]) -> Callable:
    return _setting("local_modules", paths)


def additional_files(patterns: List[str]) -> Callable:
    return _setting("additional_files", patterns)


def container(image: str, *, gpu: bool = False) -> Callable:
    def decorate(fn):
        if isinstance(fn, HitherFunction):
            fn.container, fn.container_gpu = image, gpu
        else:
            fn._hither_container, fn._hither_container_gpu = image, gpu
        return fn
    return decorate


class Config:
    """Inert here; entering a block stops a script load, as the real one does."""

    def __init__(self, **options: Any):
        self.options = options

    def __enter__(self) -> "Config":
        stop_if_loading_script("a hi.Config block")
        return self

    def __exit__(self, *exc) -> None:
        return None


class _Inert:
    """Handlers and the like: creating one at a script's top level ends the load."""

    _what = "a hither_fs object"
    _stops = True

    def __init__(self, *args: Any, **kwargs: Any):
        if self._stops:
            stop_if_loading_script(self._what)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise _not_here("{}.{}".format(self._what, name))


def _inert(name: str, stops: bool = True) -> type:
    return type(name, (_Inert,), {"_what": "hi.{}()".format(name), "_stops": stops})


ParallelJobHandler = _inert("ParallelJobHandler")
SlurmJobHandler = _inert("SlurmJobHandler")
RemoteJobHandler = _inert("RemoteJobHandler")
ComputeResource = _inert("ComputeResource")
DefaultJobHandler = _inert("DefaultJobHandler", stops=False)
JobHandler = _inert("JobHandler", stops=False)
JobCache = _inert("JobCache", stops=False)
Root = _inert("Root", stops=False)
Job = _inert("Job", stops=False)


def run(name: str, **kwargs: Any) -> Any:
    stop_if_loading_script("hi.run({!r})".format(name))
    raise _not_here("hi.run()")


def wait(timeout: Optional[float] = None) -> None:
    stop_if_loading_script("hi.wait()")
    raise _not_here("hi.wait()")


def get_job(job_id: str, root: Optional[str] = None) -> Any:
    raise _not_here("hi.get_job()")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError("hither_fs.{} is not available inside a container job (the image runs a light "
                         "stand-in of hither_fs)".format(name))


__all__ = [
    "ComputeResource", "Config", "DefaultJobHandler", "File", "Job", "JobCache", "JobCancelledError",
    "JobError", "JobHandler", "JobNotFinishedError", "JobTimeoutError", "ParallelJobHandler",
    "RemoteJobHandler", "Root", "RootError", "SlurmJobHandler", "UpstreamJobError", "WorkerLostError",
    "container", "function", "get_job", "run", "wait",
    # hither's spellings
    "DuplicateFunctionException", "JobCancelledException", "additional_files", "local_modules",
]

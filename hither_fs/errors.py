"""Exceptions raised to the caller for jobs that did not produce a result.

A job's error is recorded in the root as ``error.json`` (type, message,
traceback). :func:`job_error` turns that record back into an exception: a
:class:`JobError` that is also an instance of the original built-in type when
there is one, so ``except ValueError:`` works as if the function had been
called directly.
"""

import builtins
from concurrent import futures
from typing import Any, Dict


class JobError(Exception):
    """A job failed. ``type_name``, ``remote_traceback`` and ``job_id`` say how."""

    type_name = "JobError"

    def __init__(self, message: str, *, job_id: str = "", type_name: str = "",
                 remote_traceback: str = "", record: Dict[str, Any] = None):
        super().__init__(message)
        self.job_id = job_id
        self.type_name = type_name or type(self).type_name
        self.remote_traceback = remote_traceback
        self.record = record or {}


class JobCancelledError(JobError, futures.CancelledError):
    """The job was cancelled (also a ``concurrent.futures.CancelledError``, as a Future's result is)."""
    type_name = "JobCancelledError"


class JobTimeoutError(JobError):
    """The job ran longer than its ``job_timeout`` and was killed."""
    type_name = "JobTimeoutError"


class UpstreamJobError(JobError):
    """A job that this job takes as input failed or was cancelled."""
    type_name = "UpstreamJobError"


class WorkerLostError(JobError):
    """The workers running the job died too many times."""
    type_name = "WorkerLostError"


class ContainerError(Exception):
    """A containerized job could not be run (no runtime, no image, the container did not start).

    Raised where the container is started; a job that failed this way raises, on
    the submitting side, an error that is both a :class:`JobError` and a ``ContainerError``.
    """


class JobNotFinishedError(Exception):
    """``get_result()`` was called on a job that has not finished yet."""


_OWN = {cls.type_name: cls for cls in (JobError, JobCancelledError, JobTimeoutError,
                                       UpstreamJobError, WorkerLostError)}
_mixed: Dict[type, type] = {}


def _class_for(type_name: str, module: str) -> type:
    if type_name in _OWN:
        return _OWN[type_name]
    if type_name == "ContainerError" and module == "hither_fs":
        cls = _mixed.get(ContainerError)
        if cls is None:
            cls = _mixed[ContainerError] = type("ContainerError", (JobError, ContainerError), {
                "type_name": type_name, "__module__": "hither_fs.errors"})
        return cls
    builtin = getattr(builtins, type_name, None) if module == "builtins" else None
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        cls = _mixed.get(builtin)
        if cls is None:
            cls = _mixed[builtin] = type(type_name, (JobError, builtin), {"type_name": type_name,
                                                                         "__module__": "hither_fs.errors"})
        return cls
    return JobError


def job_error(job_id: str, function_name: str, record: Dict[str, Any]) -> JobError:
    type_name = record.get("type", "JobError")
    message = record.get("message", "")
    tb = record.get("traceback", "")
    cls = _class_for(type_name, record.get("module", ""))
    # the type's name leads the message unless it is the exception's own (Python's) type
    plain = cls is JobError or issubclass(cls, ContainerError)
    text = "{}: {}".format(type_name, message) if plain else message
    if tb:
        text += "\n\n[job {} ({}), remote traceback]\n{}".format(job_id, function_name, tb.rstrip())
    try:
        return cls(text, job_id=job_id, type_name=type_name, remote_traceback=tb, record=record)
    except TypeError:  # a built-in exception type whose constructor wants other arguments
        return JobError("{}: {}".format(type_name, text), job_id=job_id, type_name=type_name,
                        remote_traceback=tb, record=record)


class CodeChangedWarning(UserWarning):
    """A cache hit was computed by other code than the function has now, under the same version
    (``hi.Config(code_change=...)`` chooses what happens)."""

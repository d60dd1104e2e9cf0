"""hither_fs: hither functions and jobs on a shared directory.

Decorate functions, run them as jobs on local workers, Slurm allocations or
in containers, and get memoized results back - with one directory tree, the
root, as the only thing connecting the parts.
"""

from .cache import JobCache
from .config import Config
from .errors import (JobCancelledError, JobError, JobNotFinishedError, JobTimeoutError,
                     UpstreamJobError, WorkerLostError)
from .function import container, function, run
from .handlers import DefaultJobHandler, JobHandler, ParallelJobHandler
from .job import Job, get_job
from .root import Root, RootError
from .runtime.serialization import File
from .submit import wait

__version__ = "0.1.0"

__all__ = [
    "Config",
    "DefaultJobHandler",
    "File",
    "Job",
    "JobCache",
    "JobCancelledError",
    "JobError",
    "JobHandler",
    "JobNotFinishedError",
    "JobTimeoutError",
    "ParallelJobHandler",
    "Root",
    "RootError",
    "UpstreamJobError",
    "WorkerLostError",
    "container",
    "function",
    "get_job",
    "run",
    "wait",
]

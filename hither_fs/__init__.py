"""hither_fs: hither functions and jobs on a shared directory.

Decorate functions, run them as jobs on local workers, Slurm allocations or
in containers, and get memoized results back - with one directory tree, the
root, as the only thing connecting the parts.
"""

from .cache import JobCache
from .codeenv import CodeEnvError
from .compat import Database, JobCancelledException, JobStatus, NoServerError, reset
from .compute_resource import ComputeResource, RemoteJobHandler
from .config import Config
from .containers import ContainerError
from .errors import CodeChangedWarning, JobCancelledError, JobError, JobNotFinishedError, JobTimeoutError, UpstreamJobError, WorkerLostError
from .function import DuplicateFunctionException, additional_files, container, function, get_function, local_modules, run
from .function import map as map  # hi.map; not in __all__: `from hither_fs import *` must not hide the builtin map
from .handlers import DefaultJobHandler, JobHandler, ParallelJobHandler
from .job import Job, get_job
from .root import Root, RootError
from .runtime.files import CorruptFileError
from .runtime.serialization import File
from .runtime.store import BlobMissingError
from .shipping import ShipError
from .slurm import SlurmError, SlurmJobHandler
from .submit import wait
from .trust import UntrustedCodeError

__version__ = "0.1.0"

__all__ = [
    "BlobMissingError",
    "CodeChangedWarning",
    "CodeEnvError",
    "ComputeResource",
    "Config",
    "ContainerError",
    "CorruptFileError",
    "Database",
    "DefaultJobHandler",
    "DuplicateFunctionException",
    "File",
    "Job",
    "JobCache",
    "JobCancelledError",
    "JobCancelledException",
    "JobError",
    "JobHandler",
    "JobNotFinishedError",
    "JobStatus",
    "JobTimeoutError",
    "NoServerError",
    "ParallelJobHandler",
    "RemoteJobHandler",
    "Root",
    "RootError",
    "ShipError",
    "SlurmError",
    "SlurmJobHandler",
    "UntrustedCodeError",
    "UpstreamJobError",
    "WorkerLostError",
    "additional_files",
    "container",
    "function",
    "get_function",
    "get_job",
    "local_modules",
    "reset",
    "run",
    "wait",
]

"""hither's own spellings, for code written for the original ``hither`` (0.1 - 0.4).

hither_fs's names stay primary (see the README's "Coming from hither"); this
module holds what hither spelled otherwise and the refusals of what needed
hither's servers. hither sent jobs and results through MongoDB
(``hi.Database``), kachery and kachery-p2p feeds; hither_fs has one shared
directory, the root, instead. A keyword or class of those servers fails at
once, naming the root-based replacement, rather than being ignored: a job
that silently went nowhere would be worse.
"""

import os
import tempfile
from typing import Any, Dict

from .config import Config
from .errors import JobCancelledError
from .protocol import Status

#: hither's ``hi.JobStatus``: the statuses ``job.get_status()`` returns (hither_fs's own, as a str enum).
JobStatus = Status

#: hither's name for :class:`~hither_fs.JobCancelledError`.
JobCancelledException = JobCancelledError


class NoServerError(TypeError):
    """A hither spelling that needed a server (MongoDB, kachery, an event stream): hither_fs has
    none. The message names what replaces it on the root."""


_ROOT = ("the root, a directory every machine involved sees (hi.Config(root=...) or $HITHER_FS_ROOT)")
_REMOTE = ("hi.RemoteJobHandler(compute_resource_id='ID') where you submit, and hi.ComputeResource("
           "compute_resource_id='ID', job_handler=...).run() on a machine that sees the same root")
_FILES = ("files and arrays are stored by sha1 in the root's store (ROOT/store), which every process that sees "
          "the root reads: results are there for job.wait() wherever the job ran")
_CACHE = "hi.JobCache() keeps results in the root; hi.JobCache(path) in a directory of its own (a lab's, say)"

#: keyword -> (what hither needed it for, what to do instead)
SERVER_KEYWORDS: Dict[str, Any] = {
    "database": ("hither_fs has no database server: jobs, results and cache entries live in " + _ROOT,
                 "leave it out; for a remote compute resource use " + _REMOTE + "; for a cache, " + _CACHE),
    "mongo_url": ("hither_fs has no database server: jobs, results and cache entries live in " + _ROOT,
                  "leave it out; for a remote compute resource use " + _REMOTE),
    "kachery": ("hither_fs has no kachery: " + _FILES, "leave it out"),
    "kachery_config": ("hither_fs has no kachery: " + _FILES, "leave it out"),
    "event_stream_client": ("hither_fs has no event stream server: jobs reach a compute resource through "
                            "its queue in the root", "use " + _REMOTE),
    "compute_resource_uri": ("hither_fs has no kachery-p2p feeds: a compute resource is named by an id and "
                             "reached through " + _ROOT, "use " + _REMOTE),
    "uri": ("hither_fs has no kachery-p2p feeds: a compute resource is named by an id and reached through " + _ROOT,
            "use " + _REMOTE),
    "nodes_with_access": ("hither_fs has no kachery-p2p nodes: whoever can write the root can send jobs to its "
                          "compute resources (a lab shares one with hi.Root(path, shared='<group>'))",
                          "leave it out; serve with hi.ComputeResource(compute_resource_id='ID', job_handler=...)"),
    "job_handlers": ("hither_fs has no kachery-p2p compute resource partitions: one hi.ComputeResource serves one "
                     "id with one handler", "run one hi.ComputeResource(compute_resource_id='ID', job_handler=...) "
                     "per id, and send jobs with hi.RemoteJobHandler(compute_resource_id='ID')"),
    "compute_resource_dir": ("hither_fs keeps a compute resource's state in " + _ROOT, "leave it out"),
    "feed_uri": ("hither_fs has no kachery-p2p feeds", "for a cache shared between machines, " + _CACHE
                 + " on a disk they share"),
    "feed_name": ("hither_fs has no kachery-p2p feeds", "for a cache shared between machines, " + _CACHE
                  + " on a disk they share"),
    "required_files": ("hither_fs has no kachery to fetch sha1:// URIs from",
                       "pass the files as hi.File(path) arguments: they travel by content through the root's store"),
    "jhparams": ("hither_fs has no compute resource partitions (jhparams={'cr_partition': ...})",
                 "choose where jobs run with the job handler: hi.RemoteJobHandler(compute_resource_id='ID') "
                 "for each resource"),
}


#: keywords of hither's first JobCache (and of its job-cache docs) that hither_fs takes in hi.Config
CONFIG_KEYWORDS = ("cache_failing", "rerun_failing", "force_run")


def refuse_keywords(where: str, given: Dict[str, Any]) -> None:
    """Raise for keywords ``where`` (e.g. ``'hi.JobCache'``) does not take: :class:`NoServerError`
    naming the replacement for hither's server keywords, a ``TypeError`` naming ``hi.Config``
    for the options it takes, Python's own ``TypeError`` otherwise."""
    for name in given:
        if name in SERVER_KEYWORDS:
            problem, instead = SERVER_KEYWORDS[name]
            raise NoServerError("{}({}=...): {}. Instead: {}".format(where, name, problem, instead))
        if name in CONFIG_KEYWORDS:
            raise TypeError("{}({}=...): hither_fs takes {} in hi.Config, around the jobs it is for: "
                            "with hi.Config(job_cache=..., {}={!r}):".format(where, name, name, name, given[name]))
    raise TypeError("{}() got an unexpected keyword argument {!r}".format(where, next(iter(given))))


class Database:
    """hither's MongoDB connection (``hi.Database(mongo_url=..., database=...)``): refused.

    hither_fs has no database: the root is the job bus and the result store.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NoServerError(
            "hi.Database(mongo_url=...): hither_fs has no database server: jobs, results and cache entries live "
            "in {}. Leave the Database out: for a remote compute resource use {}; for a cache, {}".format(
                _ROOT, _REMOTE, _CACHE))


def tempdir_cache_path() -> str:
    """Where ``hi.JobCache(use_tempdir=True)`` keeps its entries: a directory of this user's in
    the temporary directory (``$TMPDIR``, else ``/tmp``), as hither's ``hither_job_cache`` was
    (one per user here: a directory others made first is refused)."""
    return os.path.join(tempfile.gettempdir(), "hither_fs_job_cache-uid{}".format(os.getuid()))


def reset() -> None:
    """hither's ``hi.reset()``: forget the jobs this process created so far - ``hi.wait()`` and
    the end of a handler's ``with`` block no longer wait for them (they still run, and stay in
    the root, where ``hi.get_job(id)`` finds them).

    hither also put its configuration back to the defaults; here a ``hi.Config`` block ends with
    its ``with`` statement, so outside every block - the only place hither's reset worked
    too - the defaults are in force already. Inside a block it raises."""
    from . import submit  # submit imports most of hither_fs; nothing imports this module but __init__
    if Config._stack():
        raise RuntimeError("hi.reset() inside a hi.Config block: call it outside every block (it would leave the "
                           "block's options behind, as in hither)")
    with submit._jobs_lock:
        submit._jobs.clear()

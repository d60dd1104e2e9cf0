"""``hi.Config``: nested ``with`` blocks that say how jobs run.

Each block sets some options; the others are inherited from the enclosing
block, and outside every block the defaults apply. Blocks nest per thread;
a thread other than the main one sees the main thread's open blocks under its own.
"""

import threading
from typing import Any, Dict, List

from .runtime.code import stop_if_loading_script

class _Inherited:
    """An option not given to a ``Config``: what the enclosing block (or ``DEFAULTS``) says.
    Its repr is the default, so ``help(hi.Config)`` shows the defaults."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def __repr__(self) -> str:
        return repr(self.default)


DEFAULTS: Dict[str, Any] = {
    "job_handler": None,     # None: the in-process DefaultJobHandler
    "container": False,      # True: the function's @hi.container image; a string: that image
    "job_cache": None,       # a JobCache, or None for no caching
    "force_run": False,      # run even when the cache has a result
    "cache_failing": False,  # also cache errors
    "rerun_failing": False,  # a cached error is run again instead of returned
    "job_timeout": None,     # seconds; the job is killed after that
    "fresh_process": False,  # True: each job in a new process of its own, not its worker slot's warm runner
    "max_attempts": 3,       # tries when a worker running the job is lost
    "job_resources": None,   # e.g. {"cpus": 4, "memory_gb": 8}: what one job needs (Slurm handlers)
    "root": None,            # the root directory; None: $HITHER_FS_ROOT or ~/.hither_fs
    "label": None,           # a name of your choosing, recorded with each job (hither-fs gc --label)
    "code_change": "warn",   # a cache hit from other code of the same version: "warn", "rerun" or "ignore"
    "container_runtime": None,  # "singularity" or "docker"; None: $HITHER_USE_SINGULARITY, else what the host has
    "container_network": False,  # Docker: give container jobs a network (--network none otherwise)
    "progress": None,        # a live progress line while waiting: None = on a terminal or in Jupyter only
    "cancel_on_interrupt": True,  # the first Ctrl-C in a wait cancels this process's unfinished jobs
    "detach": False,         # True: jobs never cancelled by a Ctrl-C in this process's waits
}

_D = {name: _Inherited(value) for name, value in DEFAULTS.items()}

CODE_CHANGE_CHOICES = ("warn", "rerun", "ignore")
CONTAINER_RUNTIMES = ("singularity", "docker")


class Config:
    """Options for the jobs created inside the ``with`` block; an option not given is
    inherited from the enclosing block (outside every block: the default shown).

    >>> with hi.Config(job_handler=hi.ParallelJobHandler(4), job_cache=hi.JobCache()):
    ...     job = f.run(x=1)

    job_handler: where jobs run (None: in this process, one by one). container: True for
    each function's ``@hi.container`` image, or an image for every job. job_cache: a
    ``hi.JobCache``. force_run: run even when the cache has the result. cache_failing,
    rerun_failing: also cache errors / run a cached error again. job_timeout: seconds
    until a job is killed. fresh_process: each job in a new process of its own (not a
    worker slot's warm runner). max_attempts: runs of a job whose worker is lost.
    job_resources: e.g. ``{'cpus': 4, 'memory_gb': 8}``. root: the root directory (None:
    ``$HITHER_FS_ROOT``, else ``~/.hither_fs``). label: recorded with each job.
    code_change: 'warn', 'rerun' or 'ignore' a cache hit from other code.
    container_runtime: 'singularity' or 'docker' (None: ``$HITHER_USE_SINGULARITY``, else
    what the host has). container_network: give Docker jobs a network. progress: a live
    progress line while waiting (None: on a terminal or in Jupyter). cancel_on_interrupt:
    the first Ctrl-C in a wait cancels this process's unfinished jobs. detach: jobs that
    a Ctrl-C never cancels.
    """

    _local = threading.local()
    #: The blocks the main thread has open: other threads see them, under their own.
    _main_stack: List[Dict[str, Any]] = []

    def __init__(self, job_handler=_D["job_handler"], container=_D["container"], job_cache=_D["job_cache"],
                 force_run=_D["force_run"], cache_failing=_D["cache_failing"], rerun_failing=_D["rerun_failing"],
                 job_timeout=_D["job_timeout"], fresh_process=_D["fresh_process"], max_attempts=_D["max_attempts"],
                 job_resources=_D["job_resources"],
                 root=_D["root"], label=_D["label"], code_change=_D["code_change"],
                 container_runtime=_D["container_runtime"], container_network=_D["container_network"],
                 progress=_D["progress"], cancel_on_interrupt=_D["cancel_on_interrupt"], detach=_D["detach"],
                 **hither_options):
        _hither_options(hither_options)
        given = dict(job_handler=job_handler, container=container, job_cache=job_cache,
                     force_run=force_run, cache_failing=cache_failing, rerun_failing=rerun_failing,
                     job_timeout=job_timeout, fresh_process=fresh_process, max_attempts=max_attempts,
                     job_resources=job_resources,
                     root=root, label=label, code_change=code_change,
                     container_runtime=container_runtime, container_network=container_network,
                     progress=progress, cancel_on_interrupt=cancel_on_interrupt, detach=detach)
        self.options = {k: v for k, v in given.items() if not isinstance(v, _Inherited)}
        _check(self.options)

    def __repr__(self) -> str:
        return "Config({})".format(", ".join("{}={!r}".format(k, v) for k, v in self.options.items()))

    @classmethod
    def _stack(cls) -> List[Dict[str, Any]]:
        """This thread's open blocks."""
        stack = getattr(cls._local, "stack", None)
        if stack is None:
            main = threading.current_thread() is threading.main_thread()
            stack = cls._local.stack = cls._main_stack if main else []
        return stack

    def __enter__(self) -> "Config":
        stop_if_loading_script("a hi.Config block")
        self._stack().append(self.options)
        return self

    def __exit__(self, *exc) -> None:
        self._stack().pop()

    @classmethod
    def current(cls) -> Dict[str, Any]:
        """The options in force here: defaults overlaid by every open block."""
        merged = dict(DEFAULTS)
        stack = cls._stack()
        if stack is not cls._main_stack:  # a thread (of a pool, say) started inside the main thread's blocks
            for options in list(cls._main_stack):
                merged.update(options)
        for options in stack:
            merged.update(options)
        return merged


def _hither_options(options: Dict[str, Any]) -> None:
    """hither's ``download_results=`` is accepted and changes nothing (results are in the root's
    store, read by ``job.wait()`` wherever the job ran); its server options are refused."""
    download = options.pop("download_results", None)
    if download is not None and not isinstance(download, bool):
        raise ValueError("download_results must be True, False or None, not {!r}".format(download))
    if options:
        from .compat import refuse_keywords  # compat imports this module
        refuse_keywords("hi.Config", options)


def _check(options: Dict[str, Any]) -> None:
    timeout = options.get("job_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):
        raise ValueError("job_timeout must be a positive number of seconds or None, not {!r}".format(timeout))
    attempts = options.get("max_attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError("max_attempts must be a positive integer, not {!r}".format(attempts))
    container = options.get("container", False)
    if not isinstance(container, (bool, str)) or container == "":
        raise ValueError("container must be True, False or an image URL/path, not {!r}".format(container))
    handler = options.get("job_handler")
    if handler is not None and not hasattr(handler, "queue_for"):
        raise TypeError("job_handler must be a hither_fs job handler, not {!r}".format(handler))
    resources = options.get("job_resources")
    if resources is not None:
        if not isinstance(resources, dict) or set(resources) - {"cpus", "memory_gb", "gpus"}:
            raise ValueError("job_resources must be a dict with keys among cpus, memory_gb, gpus, not {!r}"
                             .format(resources))
        for k, v in resources.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError("job_resources[{!r}] must be a non-negative number, not {!r}".format(k, v))
    label = options.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip() or len(label) > 200):
        raise ValueError("label must be a non-empty string of at most 200 characters or None, not {!r}"
                         .format(label))
    if options.get("code_change", "warn") not in CODE_CHANGE_CHOICES:
        raise ValueError("code_change must be one of {}, not {!r}".format(
            ", ".join(map(repr, CODE_CHANGE_CHOICES)), options["code_change"]))
    runtime = options.get("container_runtime")
    if runtime == "apptainer":
        options["container_runtime"] = runtime = "singularity"
    if runtime is not None and runtime not in CONTAINER_RUNTIMES:
        raise ValueError("container_runtime must be 'singularity' (Apptainer), 'docker' or None, not {!r}"
                         .format(runtime))
    if not isinstance(options.get("fresh_process", False), bool):
        raise ValueError("fresh_process must be True or False, not {!r}".format(options["fresh_process"]))
    if not isinstance(options.get("container_network", False), bool):
        raise ValueError("container_network must be True or False, not {!r}".format(options["container_network"]))
    if not isinstance(options.get("progress"), (bool, type(None))):
        raise ValueError("progress must be True, False or None (on a terminal or in Jupyter), not {!r}".format(
            options["progress"]))
    for name in ("cancel_on_interrupt", "detach"):
        if not isinstance(options.get(name, False), bool):
            raise ValueError("{} must be True or False, not {!r}".format(name, options[name]))
    for name in ("force_run", "cache_failing", "rerun_failing"):  # (hither took 0, 1 and None too)
        value = options.get(name, False)
        if isinstance(value, str) or value not in (True, False, None):
            raise ValueError("{} must be True or False, not {!r}".format(name, value))
    cache = options.get("job_cache")
    if cache not in (None, False) and not hasattr(cache, "lookup"):
        raise TypeError("job_cache must be a hi.JobCache or None, not {!r}".format(cache))

"""Turning ``f.run(**kwargs)`` into a job in the root.

Arguments are checked and encoded first (arrays and files into the store),
so a forbidden value fails before anything about the job is written. Then the
cache is consulted, the job is written with its spec, and its handler is told.
"""

import getpass
import inspect
import os
import logging
import socket
import sys
import threading
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

from . import environment, progress, protocol
from .cache import JobCache, cache_key, code_hash
from .codeenv import CodeEnvError, capture, capture_source
from .config import Config
from .errors import CodeChangedWarning
from .containers import is_pulled, requested_runtime
from .docker import image_reference
from .handlers import DefaultJobHandler
from .slurm import served_queues
from .job import POLL_MAX, POLL_MIN, Job
from .protocol import Status
from .root import Root, new_job_id, now_iso
from .runtime.code import stop_if_loading_script
from .runtime.files import CorruptFileError
from .runtime.layout import check_queue_name, host_label, is_job_id
from .runtime.serialization import TAG, encode, set_default_store
from .shipping import ShipError

log = logging.getLogger("hither_fs.submit")
_jobs_lock = threading.Lock()
_jobs: List[Job] = []
_default_handler = None


_run = {"id": None, "pid": None}
#: The jobs of ``_jobs`` that the first Ctrl-C in a wait cancels: those this process submitted itself
#: (not a job it attached to, nor a cache hit), without ``detach=True`` or ``cancel_on_interrupt=False``.
#: Kept with the pid that submitted them: a forked child cancels none of its parent's.
_cancellable: Dict[str, Any] = {"pid": None, "ids": set()}


def run_id() -> str:
    """This process's run: ``<UTC start>-<host>-<pid>``, recorded in each job it submits
    (``hither-fs gc --run``)."""
    if _run["pid"] != os.getpid():
        _run.update(id="{}-{}-{}".format(time.strftime("%Y%m%dT%H%M%S", time.gmtime()), host_label(), os.getpid()),
                    pid=os.getpid())
    return _run["id"]


def _config_store():
    """Where a ``hi.File`` made in this process (outside a job) keeps its bytes: the store of
    ``hi.Config``'s root."""
    return Root.get(Config.current()["root"]).store


set_default_store(_config_store)


def default_handler() -> DefaultJobHandler:
    global _default_handler
    if _default_handler is None:
        _default_handler = DefaultJobHandler()
    return _default_handler


def _container_image(fn, setting) -> Any:
    if setting is True:
        return fn.container
    if isinstance(setting, str):
        return setting
    return None


def submit(fn, kwargs: Dict[str, Any]) -> Job:
    stop_if_loading_script("{}.run()".format(fn.name))
    try:
        inspect.signature(fn.__wrapped__).bind(**kwargs)
    except TypeError as exc:
        raise TypeError("{}.run(): {}".format(fn.name, exc)) from None
    cfg = Config.current()
    root = Root.get(cfg["root"])
    handler = cfg["job_handler"] or default_handler()
    queue_name = check_queue_name(handler.queue_for(root))  # a path component: checked before anything is written

    upstream: Dict[str, Job] = {}

    def encode_job(value: Any, where: str) -> Any:
        if not isinstance(value, Job):
            return NotImplemented
        if value.root.path != root.path:
            raise ValueError("{}: job {} lives in root {}, not in this job's root {}".format(
                where, value.id, value.root.path, root.path))
        upstream[value.id] = value
        return {TAG: "job", "id": value.id}

    args = {name: encode(value, root.store, "argument {!r}".format(name), encode_job)
            for name, value in kwargs.items()}
    if not handler.in_process:
        fn.check_importable()
    container = _container_image(fn, cfg["container"])
    function = fn.location()
    if not container:
        function["source"] = _source(fn, root, handler)
    key = cache_key(fn.name, fn.version, args, {uid: job.spec["key"] for uid, job in upstream.items()})
    cache = cfg["job_cache"] or None
    spec = {
        "function": function,
        "args": args,
        "upstream": sorted(upstream),
        "key": key,
        "queue": queue_name,
        "handler": repr(handler),
        "container": container,
        "timeout": cfg["job_timeout"],
        "max_attempts": cfg["max_attempts"],
        "resources": handler.resources_for(cfg["job_resources"]),
        "shape": handler.shape(),
        "cache": None if cache is None else {"path": cache.path, "failing": bool(cfg["cache_failing"]),
                                             "replace": bool(cfg["force_run"])},
        "environment": environment.current().describe(),
        "submitted_by": {"host": socket.gethostname(), "pid": os.getpid(), "user": getpass.getuser(),
                         "uid": os.getuid()},
        "run": run_id(),
        "label": cfg["label"],
        "cwd": os.getcwd(),
        "chdir": True,
        "created": now_iso(),
    }

    if spec["container"]:
        _prepare_container_job(fn, root, spec, cfg)
    handler.check(spec)

    cached = False
    if cache is not None and not cfg["force_run"]:
        entry = cache.lookup(root, key)
        if entry is not None and not _same_code(entry, spec, cfg["code_change"]):
            spec["cache"]["replace"] = True  # code_change="rerun": its result takes the entry's place
            job = _create(root, spec, handler)
        elif entry is not None and ("value" in entry or not cfg["rerun_failing"]):
            job, cached = _job_from_cache(root, cache, entry, spec, handler), True
        else:
            job = _create_once(root, cache, spec, handler)
    else:
        job = _create(root, spec, handler)
    with _jobs_lock:
        _jobs.append(job)  # before the handler acts: if that fails, hi.wait() still knows the job
        if not cached and job.id == spec.get("id") and cfg["cancel_on_interrupt"] and not cfg["detach"]:
            if _cancellable["pid"] != os.getpid():
                _cancellable.update(pid=os.getpid(), ids=set())
            _cancellable["ids"].add(job.id)
    if cached:
        return job  # answered from the cache: nothing for the handler to run
    if handler.in_process:
        handler.remember(job.id, fn.__wrapped__)  # it runs in this process: no import needed
    handler.submitted(root, job)
    return job


def _source(fn, root: Root, handler) -> Optional[str]:
    """The store blob of the function's source (see :func:`hither_fs.codeenv.capture_source`);
    None for a job run in this process whose source cannot be found (it needs none)."""
    try:
        return capture_source(fn, root.store)
    except (ShipError, CodeEnvError, OSError):
        if handler.in_process:
            return None
        raise


_warned_code_change: set = set()


def _same_code(entry: Dict[str, Any], spec: Dict[str, Any], policy: str) -> bool:
    """Whether a cache entry may answer this job: False only when it was computed by other
    code of the same version and ``policy`` is ``"rerun"``. ``"warn"`` says so once per function."""
    then, now = entry.get("code"), code_hash(spec)
    if then is None or now is None or then == now or policy == "ignore":
        return True
    if policy == "rerun":
        return False
    name = spec["function"]["name"]
    if name not in _warned_code_change:
        _warned_code_change.add(name)
        warnings.warn(
            "hither function {!r} version {}: the cached result was computed from another version of the file "
            "that defines it (any change to that file counts, not only to the function). Bump the version when "
            "a change alters results, or choose with hi.Config(code_change='rerun' | 'ignore')".format(
                name, spec["function"]["version"]),
            CodeChangedWarning, stacklevel=4)
    return True


def _prepare_container_job(fn, root: Root, spec: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """Take the function's code along (see :mod:`hither_fs.codeenv`) and pin down the image
    and the runtime asked for (None: the host that runs the job chooses).

    A container job starts in its attempt directory, not the submitter's
    working directory (which the container does not see).
    """
    spec["container_runtime"] = requested_runtime(cfg["container_runtime"])
    spec["container_network"] = bool(cfg["container_network"])
    if spec["container_runtime"] == "docker":
        image_reference(spec["container"])  # Docker runs docker:// images only: refused here, not in the job
    elif not is_pulled(spec["container"]):
        spec["container"] = os.path.abspath(os.path.expanduser(spec["container"]))
    fn.check_importable()
    spec["code"] = capture(fn, root.store)
    spec["gpu"] = bool(getattr(fn, "container_gpu", False))
    spec["chdir"] = False


def _create(root: Root, spec: Dict[str, Any], handler) -> Job:
    spec["id"] = new_job_id()
    protocol.submit(root, spec)
    return Job(spec["id"], root, handler)


def _create_once(root: Root, cache: JobCache, spec: Dict[str, Any], handler) -> Job:
    """A job for a cache key that is not cached yet: the job already computing it (in this
    root, by any process on any node), or a new one that others will attach to.

    A new job is published first and queued only once its in-flight marker is in place;
    a submitter that loses the race for the marker withdraws its job (nobody saw it) and
    attaches to the winner's.
    """
    key = spec["key"]
    for _ in range(100):
        n, holder = cache.in_flight(root, key)
        if holder is not None:
            try:
                state = protocol.read_state(root, holder)
            except (OSError, CorruptFileError, ValueError):
                state = {}
            if state.get("status") not in (None, Status.ERROR, Status.CANCELLED):
                if _can_attach(root, holder, state, spec["queue"]) and (
                        state.get("status") != Status.FINISHED or protocol.mark_used(root, holder)):
                    return Job(holder, root, handler)
                return _create(root, spec, handler)
        # no job computes the key (none ever did, or the last one failed or is gone): be it
        spec["id"] = new_job_id()
        protocol.publish(root, spec)
        if cache.claim_in_flight(root, key, n + 1, spec["id"]):
            entry = cache.lookup(root, key)  # finished just now, by the job of the marker before?
            if entry is not None and "value" in entry:
                protocol.withdraw(root, spec["id"])
                cache.release_in_flight(root, key, spec["id"])
                return _job_from_cache(root, cache, entry, spec, handler)
            protocol.release(root, spec)
            return Job(spec["id"], root, handler)
        protocol.withdraw(root, spec["id"])
    raise RuntimeError("could not agree with other submitters on a job for cache key {}".format(key))


_served: Dict[str, Tuple[float, set]] = {}  # root -> (when looked, queues live workers serve)


def _can_attach(root: Root, holder: str, state: Dict[str, Any], queue: str) -> bool:
    """Whether a job computing the same key will finish without this process: it did, it runs,
    or it waits in this job's queue or in one that a live worker (or a Slurm handler) serves.
    Not a job waiting in another environment's queue nobody serves (left by a script that is
    gone), nor another process's in-process job."""
    theirs = state.get("queue", "")
    if state.get("status") not in (Status.QUEUED, Status.PENDING) or theirs == queue:
        return True
    if not isinstance(theirs, str) or theirs.startswith("inproc-"):
        return False  # only its own process runs an in-process job
    if protocol.running_claims(root, holder):
        return True
    now = time.monotonic()
    looked, served = _served.get(root.path, (-1e9, set()))
    if now - looked > 5.0:  # heartbeats are read at most every 5 s for this
        served = served_queues(root)
        _served[root.path] = (now, served)
    try:
        return theirs in served or os.path.exists(root.layout.scheduler_note(check_queue_name(theirs)))
    except ValueError:
        return False


def _job_from_cache(root: Root, cache: JobCache, entry: Dict[str, Any], spec: Dict[str, Any], handler) -> Job:
    """A finished job for a cache hit: the original job when it is in this root,
    otherwise a new job record holding the cached outcome (no function runs)."""
    wanted = Status.FINISHED if "value" in entry else Status.ERROR
    original = entry.get("job_id")
    if entry.get("root") == root.path and is_job_id(original):
        try:
            if protocol.read_state(root, original).get("status") == wanted and protocol.mark_used(root, original):
                return Job(original, root, handler)
        except (OSError, CorruptFileError):
            pass
    job_id = new_job_id()
    spec.update(id=job_id, from_cache={"key": entry["key"], "job_id": original, "root": entry.get("root"),
                                       "cache": cache.path or "root"})
    now = now_iso()
    state = {"status": wanted.value, "attempt": 0, "queue": spec["queue"], "submitted": now, "finished": now,
             "cached": True}
    if wanted == Status.FINISHED:
        state["result"] = {"value": entry["value"]}
    else:
        state["error"] = entry["error"]
    protocol.submit_final(root, spec, state)
    return Job(job_id, root, handler)


def wait(timeout: Optional[float] = None) -> None:
    """Wait for every job created in this process to finish (errors are not raised here:
    ``job.get_result()`` raises them).

    It waits for the newest unfinished job first: once that one is done the
    others (queues are served oldest first) mostly are too, so each job's
    state is read about once, however many jobs there are. While it waits for
    the newest of many, it looks at most every 5% of the time waited so far
    (within 10 ms at first, never more than half a second late).
    """
    stop_if_loading_script("hi.wait()")
    deadline = None if timeout is None else time.monotonic() + timeout
    with _jobs_lock:
        jobs = list(_jobs)
    # the newest first; then each of the others in turn (most are done by then: one look each)
    order = jobs[-1:] + jobs[:-1]
    with progress.watching(jobs):  # the progress line; the first Ctrl-C cancels (see interrupted())
        for k, job in enumerate(order):
            many = k < len(order) - 1
            try:
                # with others still to come, a few milliseconds of lag cost nothing: look less often
                job.wait_done(None if deadline is None else max(0.0, deadline - time.monotonic()),
                              poll=POLL_MAX if many else POLL_MIN, lag=0.05 if many else 0.0)
            except (protocol.JobDirectoryError, FileNotFoundError):
                continue  # damaged or removed: it will never change (job.get_result() raises why)
            except TimeoutError:  # say the caller's timeout, not what was left of it for this job
                raise TimeoutError("job {} ({}) did not finish within {} s (status: {})".format(
                    job.id, job.function_name, timeout, job.status)) from None


def interrupted() -> None:
    """The first Ctrl-C (``KeyboardInterrupt``) in ``hi.wait()`` or ``job.wait()``: cancel the
    unfinished jobs this process submitted, and say so on stderr; the caller then raises the
    ``KeyboardInterrupt`` on.

    Not cancelled: jobs submitted with ``hi.Config(detach=True)`` or
    ``cancel_on_interrupt=False``, jobs of other processes that this one
    attached to (the same cache key), and all of them when the wait itself
    runs under ``cancel_on_interrupt=False``. A second Ctrl-C while cancelling
    stops at once: it is raised, and the jobs not reached go on.
    """
    with _jobs_lock:
        ids = set(_cancellable["ids"]) if _cancellable["pid"] == os.getpid() else set()
        mine = list({(job.root.path, job.id): job for job in _jobs if job.id in ids}.values())
    unfinished = []
    for job in reversed(mine):  # the newest first: a downstream job before its upstream ones
        try:
            if not job.is_done():
                unfinished.append(job)
        except (OSError, CorruptFileError, protocol.JobDirectoryError):
            continue  # removed or damaged: nothing to cancel
    if not unfinished:
        return
    n = len(unfinished)
    jobs_word = "job" if n == 1 else "jobs"
    if not Config.current()["cancel_on_interrupt"]:
        _say("interrupted; the {} unfinished {} this process submitted keep running (cancel_on_interrupt=False); "
             "`hither-fs cancel --run {}` cancels them".format(n, jobs_word, run_id()))
        return
    cancelled = running = 0
    left: List[str] = []
    reached = 0
    try:
        _say("interrupted: cancelling the {} unfinished {} this process submitted (Ctrl-C again to stop)".format(
            n, jobs_word))
        by_root: Dict[str, List[Job]] = {}
        for job in unfinished:
            by_root.setdefault(job.root.path, []).append(job)
        for group in by_root.values():
            root = group[0].root
            found = protocol.find_tokens(root, {job.id for job in group})  # one pass over the root, not one per job
            for job in group:
                reached += 1
                try:
                    status = protocol.cancel(root, job.id, found.get(job.id))
                except (OSError, CorruptFileError, protocol.JobDirectoryError) as exc:
                    log.warning("could not cancel job %s: %s", job.id, exc)
                    left.append(job.id)
                    continue
                if status == Status.CANCELLED:
                    cancelled += 1
                elif status == Status.RUNNING:
                    running += 1
                elif status not in protocol.FINAL_VALUES:
                    left.append(job.id)  # another process holds it just now
    except KeyboardInterrupt:
        _say("second Ctrl-C: stopped cancelling after {} of {} jobs; the others go on (`hither-fs cancel --run {}` "
             "cancels them)".format(max(0, reached - 1), n, run_id()))
        raise
    said = "cancelled {} {}".format(cancelled + running, "job" if cancelled + running == 1 else "jobs")
    if running:
        said += " ({} running: {} now)".format(running, "its worker kills it" if running == 1
                                               else "their workers kill them")
    if left:
        said += "; {} could not be cancelled now (`hither-fs cancel --run {}` tries again)".format(len(left), run_id())
    _say(said + ". To keep jobs running after Ctrl-C, use hi.Config(cancel_on_interrupt=False), or submit them "
                "with hi.Config(detach=True)")


def _say(message: str) -> None:
    """A line for the person at the terminal (the wait was interrupted: not a log record)."""
    try:
        sys.stderr.write("hither_fs: {}\n".format(message))
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass

"""Turning ``f.run(**kwargs)`` into a job in the root.

Arguments are checked and encoded first (arrays and files into the store),
so a forbidden value fails before anything about the job is written. Then the
cache is consulted: a hit is answered from its entry alone, by a
:class:`CacheHit` (nothing is written, the handler is not told); otherwise the
job is written with its spec, and its handler is told.
"""

import getpass
import inspect
import json
import os
import logging
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import environment, progress, protocol
from .cache import NOT_DECODED, JobCache, cache_key, code_hash
from .codeenv import CodeEnvError, capture, capture_source
from .config import Config
from .errors import CodeChangedWarning
from .containers import is_pulled, requested_runtime
from .docker import image_reference
from .gc import MIN_GRACE_SECONDS
from .handlers import DefaultJobHandler, JobHandler, ParallelJobHandler
from .slurm import SlurmJobHandler, served_queues
from .job import POLL_MAX, POLL_MIN, Job
from .protocol import Status
from .root import Root, iso_at, new_job_id, now_iso
from .runtime.code import stop_if_loading_script
from .runtime.files import RECORD_LIMIT, CorruptFileError, read_record, read_text_tail
from .runtime.layout import Layout, check_queue_name, host_label
from .runtime.serialization import TAG, decode, encode, set_default_store
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
    """One job of ``fn`` (``fn.run(**kwargs)``)."""
    what = "{}.run()".format(fn.name)
    stop_if_loading_script(what)
    batch = _Batch(fn, what)
    item = batch.prepare(kwargs, "")
    written = batch.write(item)
    batch.finish([written], [item])
    return written[0]


def submit_many(fn, items: Any, common: Dict[str, Any]) -> List[Job]:
    """The jobs of ``fn.map(items, **common)``, in order (see :meth:`HitherFunction.map`).

    Two passes: first every item is checked and encoded and its spec made (a bad item
    raises, naming it, before any job is written); then the jobs are written one after
    the other exactly as :func:`submit` writes one, and the handler is told once.
    """
    what = "{}.map()".format(fn.name)
    stop_if_loading_script(what)
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError("{}: the first argument is a list (or other iterable) of dicts of keyword arguments, one "
                        "dict per job, not {}: e.g. {}([dict(x=1), dict(x=2)], y=0)".format(
                            what, "a dict" if isinstance(items, Mapping) else type(items).__name__,
                            what[:-2]))
    items = list(items)
    batch = _Batch(fn, what)
    prepared = []
    for k, kwargs in enumerate(items):
        where = "item {}: ".format(k)
        if not isinstance(kwargs, Mapping):
            raise TypeError("{}: {}a {} is not a dict of keyword arguments".format(what, where, type(kwargs).__name__))
        both = sorted(set(kwargs) & set(common), key=str)
        if both:
            raise TypeError("{}: {}{} given both in the item and as a common keyword argument of map(); give each "
                            "argument in one place".format(what, where, ", ".join(repr(n) for n in both)))
        bad = [n for n in kwargs if not isinstance(n, str)]
        if bad:
            raise TypeError("{}: {}argument names must be strings, not {!r}".format(what, where, bad[0]))
        prepared.append(batch.prepare(dict(common, **kwargs), where))
    written: List[Tuple[Job, bool]] = []
    try:
        for item in prepared:
            written.append(batch.write(item))
    finally:  # a write that failed (a full disk): the jobs written before it are known and run all the same
        batch.finish(written, prepared[:len(written)])
    return [job for job, _ in written]


class _Batch:
    """What the jobs of one ``.run()`` or ``.map()`` call share, worked out once: the
    config, root, handler and queue, the function's location and source, and the spec
    fields that are the same for each job (``template``), with their JSON."""

    def __init__(self, fn, what: str):
        self.fn, self.what = fn, what
        self.signature = _signature(fn)
        cfg = self.cfg = Config.current()
        self.root = Root.get(cfg["root"])
        self.handler = cfg["job_handler"] or default_handler()
        # a path component: checked before anything is written
        self.queue = check_queue_name(self.handler.queue_for(self.root))
        self.cache = cfg["job_cache"] or None
        self.template: Optional[Dict[str, Any]] = None
        self.encoder: Optional[_SpecEncoder] = None

    def _check_args(self, kwargs: Dict[str, Any], where: str) -> None:
        names, required, free = self.signature
        if TAG in kwargs:
            raise TypeError("{}: {}an argument named {!r} cannot be passed: the records use that name to tag "
                            "values".format(self.what, where, TAG))
        if free or not (names.issuperset(kwargs) and required.issubset(kwargs)):
            try:
                inspect.signature(self.fn.__wrapped__).bind(**kwargs)
            except TypeError as exc:
                raise TypeError("{}: {}{}".format(self.what, where, exc)) from None

    def prepare(self, kwargs: Dict[str, Any], where: str) -> "_Item":
        """A job's spec (without its id), checked, and the cache's answer: nothing is written
        but store blobs. A cache hit is answered here, by its entry alone (see :class:`CacheHit`):
        its spec is not made unless asked for, and the handler, which runs nothing for it, is
        not asked to check it."""
        self._check_args(kwargs, where)
        root = self.root
        upstream: Dict[str, Job] = {}

        def encode_job(value: Any, at: str) -> Any:
            if not isinstance(value, Job):
                return NotImplemented
            if value.root.path != root.path:
                raise ValueError("{}: job {} lives in root {}, not in this job's root {}".format(
                    at, value.id, value.root.path, root.path))
            upstream[value.id] = value
            return {TAG: "job", "id": value.id}

        at = "{}: {}".format(self.what, where) if where else ""  # a map() item: named as its other errors
        args = {name: encode(value, root.store, "{}argument {!r}".format(at, name), encode_job)
                for name, value in kwargs.items()}
        size = protocol.record_size(args)
        if size > protocol.RECORD_LIMIT:  # before any job of a map() is written, naming the item
            raise protocol.too_big_arguments(size, at)
        fn = self.fn
        key = cache_key(fn.name, fn.version, args, {uid: _key_of(job) for uid, job in upstream.items()})
        answer = None
        if self.cache is not None and not self.cfg["force_run"]:
            answer = self._answer(key, args, upstream)
            if isinstance(answer, CacheHit):
                return {"key": key, "id": answer.id}, upstream, answer
        spec = self._spec(args, upstream, now_iso(), key)
        if answer is _RERUN:
            spec["cache"]["replace"] = True  # code_change="rerun": its result takes the entry's place
        self.handler.check(spec)
        return spec, upstream, answer

    def _ensure_template(self) -> Dict[str, Any]:
        """The spec fields every job of this call shares, made (with their JSON) at first use."""
        if self.template is None:
            template = self._template()
            last = _last_encoder.get("encoder")
            if last is None or last.template != template:  # the same as the last call's: its JSON is made
                last = _last_encoder["encoder"] = _SpecEncoder(template)
            self.template, self.encoder = last.template, last
        return self.template

    def _spec(self, args: Dict[str, Any], upstream: Any, created: str, key: str) -> Dict[str, Any]:
        spec = dict(self._ensure_template())
        spec.update(args=args, upstream=sorted(upstream), created=created, key=key)
        if self.cache is not None:
            spec["cache"] = dict(spec["cache"])  # its own: "replace" may change for this job alone
        return spec

    def _answer(self, key: str, args: Dict[str, Any], upstream: Dict[str, Job]) -> Any:
        """What the cache says of ``key``: a :class:`CacheHit`; :data:`_RERUN` for an entry
        computed by other code when ``code_change`` is ``"rerun"``; None (run it, or attach
        to the job computing it) for a miss, or a cached error with ``rerun_failing``."""
        fn, cache, cfg, root = self.fn, self.cache, self.cfg, self.root
        found = None if cache is None else cache.find(root, key, fn.name, fn.version)
        if cache is None or found is None:
            return None
        entry, value = found
        if entry.get("code") is not None and cfg["code_change"] != "ignore":
            if not _same_code(entry, self._code(), fn.name, fn.version, cfg["code_change"], stacklevel=6):
                return _RERUN
        if "value" not in entry and cfg["rerun_failing"]:
            return None
        if entry.get("root") == root.path:
            _hand_out(root, entry["job_id"])
        created = time.time()

        def spec(job_id: str, from_cache: Dict[str, Any]) -> Dict[str, Any]:
            made = self._spec(args, upstream, iso_at(created), key)
            made.update(id=job_id, from_cache=from_cache)
            return made
        return CacheHit(root, self.handler, cache, entry, value, spec, fn.name, fn.version, cfg["label"])

    def _code(self) -> Optional[str]:
        """What identifies the function's code now (see :func:`hither_fs.cache.code_hash`), for a
        cache hit: a container job's code environment (the spec's template is made for it), else
        the sha1 of its source as this process first stored it (see
        :func:`hither_fs.codeenv.capture_source`), once per code object (a reload makes a new one)."""
        fn, root = self.fn, self.root
        if _container_image(fn, self.cfg["container"]):
            return code_hash(self._ensure_template())
        code = fn.__wrapped__.__code__
        if code not in _code_now:
            _code_now[code] = _source(fn, root, self.handler)
        return _code_now[code]

    def _template(self) -> Dict[str, Any]:
        fn, cfg, root, handler = self.fn, self.cfg, self.root, self.handler
        if not handler.in_process:
            fn.check_importable()
        container = _container_image(fn, cfg["container"])
        function = fn.location()
        if function["module"] == "__main__" and not handler.in_process:
            # a script's top level runs again in the job: with the command line it had here
            module = sys.modules.get(fn.__wrapped__.__module__)
            function["argv"] = list(getattr(module, "__hither_argv__", None) or sys.argv)
        if not container:
            function["source"] = _source(fn, root, handler)
        cache = self.cache
        template = {
            "function": function,
            "queue": self.queue,
            "handler": repr(handler),
            "container": container,
            "timeout": cfg["job_timeout"],
            "max_attempts": cfg["max_attempts"],
            "resources": handler.resources_for(cfg["job_resources"]),
            "shape": handler.shape(),
            "cache": None if cache is None else {"path": cache.path, "failing": bool(cfg["cache_failing"]),
                                                 "replace": bool(cfg["force_run"])},
            "environment": environment.current().describe(),
            "submitted_by": _submitted_by(),
            "run": run_id(),
            "label": cfg["label"],
            "cwd": os.getcwd(),
            "chdir": True,
        }
        if cfg["fresh_process"]:
            template["fresh_process"] = True  # (not in other specs: they run in a warm runner)
        if template["container"]:
            _prepare_container_job(fn, root, template, cfg)
        return template

    def write(self, item: "_Item") -> Tuple[Job, bool]:
        """Put one prepared job in the root, or answer it from the cache (then True)."""
        spec, upstream, answer = item
        if isinstance(answer, CacheHit):
            return answer, True
        root, handler, cache, encoder = self.root, self.handler, self.cache, self.encoder
        for job in upstream.values():
            if isinstance(job, CacheHit):
                job.keep()  # its worker reads it from the root
        if cache is not None and not self.cfg["force_run"] and answer is not _RERUN:
            job = _create_once(root, cache, spec, handler, encoder,
                               errors_count=bool(self.cfg["cache_failing"]) and not self.cfg["rerun_failing"])
        else:
            job = _create(root, spec, handler, encoder)
        return job, isinstance(job, CacheHit)

    def finish(self, jobs: List[Tuple[Job, bool]], items: "List[_Item]") -> None:
        """Remember the jobs written (``hi.wait()``, Ctrl-C) and tell the handler about those
        it runs: once for the built-in handlers (they look at the queue, not at the job),
        once per job for any other."""
        cfg, handler, root = self.cfg, self.handler, self.root
        cancellable = cfg["cancel_on_interrupt"] and not cfg["detach"]
        todo: List[Job] = []
        with _jobs_lock:
            for (job, cached), (spec, _, _) in zip(jobs, items):
                _jobs.append(job)  # before the handler acts: if that fails, hi.wait() still knows the job
                if not cached and job.id == spec.get("id") and cancellable:
                    if _cancellable["pid"] != os.getpid():
                        _cancellable.update(pid=os.getpid(), ids=set())
                    _cancellable["ids"].add(job.id)
                if not cached:  # a cached one has nothing for the handler to run
                    todo.append(job)
        if not todo:
            return
        if handler.in_process:
            for job in todo:
                handler.remember(job.id, self.fn.__wrapped__)  # it runs in this process: no import needed
        if getattr(type(handler), "submitted", None) in _SUBMITTED_ONCE:
            handler.submitted(root, todo[-1])
        else:
            for job in todo:
                handler.submitted(root, job)


def _signature(fn) -> Tuple[frozenset, frozenset, bool]:
    """The function's keyword names, the required ones, and whether it takes other forms
    (``**kwargs``, positional-only): then every call is checked by ``inspect``. Worked out
    once per function."""
    facts = getattr(fn, "_hither_signature", None)
    if facts is None or facts[0] is not fn.__wrapped__:
        params = inspect.signature(fn.__wrapped__).parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        facts = (fn.__wrapped__, frozenset(p.name for p in params if p.kind in kinds),
                 frozenset(p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty),
                 any(p.kind not in kinds for p in params))
        fn._hither_signature = facts
    return facts[1:]


_who: Dict[str, Any] = {"pid": None}


def _submitted_by() -> Dict[str, Any]:
    """Who submits (recorded in each spec): looked up once per process."""
    if _who["pid"] != os.getpid():
        _who.update(pid=os.getpid(), record={"host": socket.gethostname(), "pid": os.getpid(),
                                             "user": getpass.getuser(), "uid": os.getuid()})
    return dict(_who["record"])


#: The handlers whose ``submitted()`` looks at the queue, not at the job: told once per ``.map()``.
_SUBMITTED_ONCE = {JobHandler.submitted, DefaultJobHandler.submitted, ParallelJobHandler.submitted,
                   SlurmJobHandler.submitted}


def _line(key: str, value: Any) -> str:
    """``"key": value`` as :func:`hither_fs.runtime.files.dumps` writes it one level down in a record."""
    if type(value) is str:
        text = encode_basestring_ascii(value)  # what json.dumps does with a string
    elif type(value) is list and not value:
        text = "[]"
    elif type(value) is dict and value and all(type(k) is str and type(v) in _SCALARS for k, v in value.items()):
        # the common arguments: a flat dict of scalars, each encoded alike with or without indent
        text = "{\n" + ",\n".join("  {}: {}".format(encode_basestring_ascii(k), _scalar(v))
                                   for k, v in sorted(value.items())) + "\n }"
    else:  # JSON strings hold no raw newline: each newline is the layout's, one level deeper here
        text = json.dumps(value, indent=1, sort_keys=True).replace("\n", "\n ")
    return " {}: {}".format(encode_basestring_ascii(key), text)


def _scalar(value: Any) -> str:
    """A scalar as json writes it (an int or a string without json's machinery)."""
    t = type(value)
    if t is int:
        return int.__repr__(value)
    if t is str:
        return encode_basestring_ascii(value)
    return json.dumps(value)


_MISSING = object()
_SCALARS = (str, int, float, bool, type(None))


_last_encoder: Dict[str, "_SpecEncoder"] = {}


class _SpecEncoder:
    """``dumps(spec)``, byte for byte, for many specs made from one template: the fields a
    spec shares with the template (the same object) are encoded once, the others (args,
    key, id...) for each spec. Saves most of the time ``json`` takes with ``indent``."""

    def __init__(self, template: Dict[str, Any]):
        self.template = template  # never changed afterwards: specs share its values
        self.lines = {key: _line(key, value) for key, value in template.items()}

    def __call__(self, spec: Dict[str, Any]) -> bytes:
        template, lines = self.template, self.lines
        parts = [lines[key] if template.get(key, _MISSING) is spec[key] else _line(key, spec[key])
                 for key in sorted(spec)]
        return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8")


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


def _same_code(entry: Dict[str, Any], now: Optional[str], name: str, version: str, policy: str,
               stacklevel: int = 5) -> bool:
    """Whether a cache entry may answer a job of the function whose code is ``now``: False only
    when it was computed by other code of the same version and ``policy`` is ``"rerun"``.
    ``"warn"`` says so once per function."""
    then = entry.get("code")
    if then is None or now is None or then == now or policy == "ignore":
        return True
    if policy == "rerun":
        return False
    if name not in _warned_code_change:
        _warned_code_change.add(name)
        warnings.warn(
            "hither function {!r} version {}: the cached result was computed from another version of the file "
            "that defines it (any change to that file counts, not only to the function). Bump the version when "
            "a change alters results, or choose with hi.Config(code_change='rerun' | 'ignore')".format(
                name, version),
            CodeChangedWarning, stacklevel=stacklevel)
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


def _create(root: Root, spec: Dict[str, Any], handler, encoder: "Optional[_SpecEncoder]" = None) -> Job:
    spec["id"] = new_job_id()
    protocol.submit(root, spec, encoder(spec) if encoder else None)
    return Job(spec["id"], root, handler)


def _create_once(root: Root, cache: JobCache, spec: Dict[str, Any], handler,
                 encoder: "Optional[_SpecEncoder]" = None, errors_count: bool = False) -> Job:
    """A job for a cache key that is not cached yet: the job already computing it (in this
    root, by any process on any node), or a new one that others will attach to. With
    ``errors_count`` (``cache_failing``, not ``rerun_failing``) a job that failed computing it
    is that job too, if it caches its error (its worker commits, then records the entry).

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
            if state.get("status") == Status.ERROR and errors_count and _caching_its_error(root, holder, state) \
                    and protocol.mark_used(root, holder):
                return Job(holder, root, handler)
            if state.get("status") not in (None, Status.ERROR, Status.CANCELLED):
                if _can_attach(root, holder, state, spec["queue"]) and (
                        state.get("status") != Status.FINISHED or protocol.mark_used(root, holder)):
                    return Job(holder, root, handler)
                return _create(root, spec, handler, encoder)
        # no job computes the key (none ever did, or the last one failed or is gone): be it
        spec["id"] = new_job_id()
        protocol.publish(root, spec, encoder(spec) if encoder else None)
        if cache.claim_in_flight(root, key, n + 1, spec["id"]):
            # finished just now, by the job of the marker before? Then this job is finished with
            # that result (another submitter may have seen the marker and attached to it already)
            found = cache.find(root, key, spec["function"]["name"], spec["function"]["version"])
            if found is not None and "value" in found[0]:
                entry = found[0]
                cache.copy_blobs_to(root, entry["value"])  # (a lab cache's blobs are in its own store)
                protocol.finish_unreleased(root, spec, {"value": entry["value"]}, from_cache=_from_cache(cache, entry))
                cache.release_in_flight(root, key, spec["id"])
                if entry.get("root") == root.path:
                    _hand_out(root, entry["job_id"])
                return Job(spec["id"], root, handler)
            protocol.release(root, spec)
            return Job(spec["id"], root, handler)
        protocol.withdraw(root, spec["id"])
    raise RuntimeError("could not agree with other submitters on a job for cache key {}".format(key))


#: Errors no worker's commit records in the cache (the job never ran, or was not let finish).
_NOT_CACHED_ERRORS = {"WorkerLostError", "UpstreamJobError", "SlurmError", "JobCancelledError"}


def _caching_its_error(root: Root, job_id: str, state: Dict[str, Any]) -> bool:
    """Whether a failed job is about to put its error in the cache: a worker committed it just
    now (then records the entry) for a spec with ``cache_failing`` - not an error that never
    goes there (an upstream's, a lost worker's) or one whose worker died before recording it."""
    error = state.get("error") if isinstance(state.get("error"), dict) else {}
    if not state.get("runtime") or error.get("type") in _NOT_CACHED_ERRORS:
        return False
    try:
        if time.time() - os.stat(root.layout.state_file(job_id)).st_mtime > 120:
            return False
        return bool((protocol.read_spec(root, job_id).get("cache") or {}).get("failing"))
    except (OSError, CorruptFileError, ValueError, AttributeError):
        return False


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


class CacheHit(Job):
    """The job a cache hit answers with: the job that computed the cached outcome, known
    from the cache entry alone. A hit costs one read of the entry and writes nothing.

    Its id is that job's id (the entry's ``job_id``). With ``JobCache()`` the job is in
    this root, so the hit *is* that job, as ``hi.get_job(id)`` and ``hither-fs show`` see
    it; with a lab cache ``JobCache(path)`` it may be in another root (the entry's, which
    ran it). Either way the hit's status (``finished``, or ``error`` for a cached error),
    result and error come from the entry, held in memory: ``wait()``, ``result()``,
    ``done()`` and the other ``Future`` methods answer at once, without reading the root;
    a result that refers to no blob was decoded, and so checked, as the entry was read;
    a result's arrays and files are read from the cache's store (checked against their
    hashes when the entry was read, and again as they are read). ``get_runtime_info()``
    and ``get_console_output()`` are those of the run that computed it, read from its
    job's directory in the entry's root while that is there (else empty); ``cancel()``
    is False, as for any job that has ended; the hit is not this process's to cancel on
    Ctrl-C, and its handler is not told of it.

    A record is written in this root only when something needs one: when the hit is an
    input of a job that is not itself a hit (that job's worker reads its upstream results
    from the root), or ``set_label()`` labels it (:meth:`keep`). If the root holds the
    job, it is then made young to ``hither-fs gc`` (handed out again); if not (a lab
    cache's entry, or a job gc removed), a final job of that id is put in with the cached
    outcome, ``from_cache`` in its spec and the result's blobs in the root's store - once
    per root, as every later hit of the entry finds it there. So until then a hit from a
    lab cache is not in ``hither-fs ls`` of this root (it ran nothing here), and
    ``hi.get_job(id)`` in another process finds it only in the root that ran it.
    """

    def __init__(self, root: Root, handler: Any, cache: JobCache, entry: Dict[str, Any], value: Any,
                 make_spec: Callable[[str, Dict[str, Any]], Dict[str, Any]], name: str, version: str,
                 label: Optional[str]):
        super().__init__(entry["job_id"], root, handler)
        self.key: str = entry["key"]
        self._cache, self._store = cache, cache.store(root)
        self._origin = entry.get("root") if isinstance(entry.get("root"), str) else None
        self._make_spec, self._name, self._version, self._label = make_spec, name, version, label
        self._value = value  # the result decoded once as the entry was read (NOT_DECODED: not yet)
        self._lock = threading.Lock()
        self._kept = False
        self._ran: Optional[Dict[str, Any]] = None  # the state of the run that computed it
        outcome: Dict[str, Any] = {
            "status": Status.FINISHED.value if "value" in entry else Status.ERROR.value, "attempt": 0, "cached": True,
            "from_cache": _from_cache(cache, entry)}
        if "value" in entry:
            outcome["result"] = {"value": entry["value"]}
        else:
            outcome["error"] = entry["error"]
        self._outcome = self._final = outcome  # a final state: Job answers from it, never reading the root

    # -- what it is ---------------------------------------------------------------

    @property
    def function_name(self) -> str:
        return self._name

    def get_function_version(self) -> str:
        return self._version

    @property
    def spec(self) -> Dict[str, Any]:
        """The job's spec in this root, or - while it has no record here - the spec it would be
        recorded with (this submission's, with ``from_cache``)."""
        if self._spec is None:
            if protocol.job_exists(self.root, self.id):
                self._spec = protocol.read_spec(self.root, self.id)
            else:
                self._spec = self._make_spec(self.id, self._outcome["from_cache"])
        return self._spec

    def get_label(self) -> str:
        if protocol.job_exists(self.root, self.id):
            return super().get_label()
        return self._label or self._name

    # -- its outcome, from the entry ------------------------------------------------

    def get_result(self) -> Any:
        final = self._outcome
        if "result" not in final:
            raise self._error(final)
        with self._lock:
            value, self._value = self._value, NOT_DECODED
        if value is NOT_DECODED:
            return decode(final["result"]["value"], self._store)
        return value

    def cancel(self) -> bool:
        return False  # it has ended

    def done(self) -> bool:
        return True

    def result(self, timeout: Optional[float] = None) -> Any:
        return self.get_result()  # (it has ended: no Future machinery to set up)

    # -- the run that computed it -------------------------------------------------

    def _run_state(self) -> Dict[str, Any]:
        """The state of the job that computed the outcome, in the entry's root ({} if gone)."""
        if self._ran is None:
            ran: Dict[str, Any] = {}
            if self._origin is not None and os.path.isabs(self._origin):
                try:
                    ran, _ = read_record(Layout(self._origin).state_file(self.id), limit=RECORD_LIMIT)
                except Exception:  # gone, unreadable or damaged: nothing to tell
                    ran = {}
                if not isinstance(ran, dict) or ran.get("status") != self._outcome["status"]:
                    ran = {}
            self._ran = ran
        return self._ran

    def get_runtime_info(self) -> Dict[str, Any]:
        """Host, pid, start and end, wall and CPU seconds, peak memory of the run that computed
        the outcome (empty when its job's directory is gone, or cannot be read from here)."""
        return dict(self._run_state().get("runtime") or {})

    def get_console_output(self) -> Dict[str, str]:
        """The console output of the run that computed the outcome (empty when gone)."""
        ran, out = self._run_state(), {}
        for name in ("stdout", "stderr"):
            size = (ran.get("console") or {}).get(name)  # (a state is read only from an origin that is a path)
            out[name] = read_text_tail(Layout(str(self._origin)).job_file(self.id, name + ".txt")) if size else ""
        return out

    # -- a record in the root, when needed ----------------------------------------

    def set_label(self, label: str) -> "Job":
        self.keep()
        return super().set_label(label)

    def keep(self) -> None:
        """Make sure this root holds the job (see the class docstring): made young to gc if
        it is there, put in as a final job with the cached outcome if not."""
        with self._lock:
            if self._kept:
                return
            root = self.root
            if not (protocol.job_exists(root, self.id) and protocol.mark_used(root, self.id)):
                final = self._outcome
                if "result" in final:
                    self._cache.copy_blobs_to(root, final["result"]["value"])
                spec = self._spec if self._spec is not None else self._make_spec(self.id, final["from_cache"])
                now = now_iso()
                state = dict(final, queue=spec["queue"], submitted=now, finished=now)
                try:
                    protocol.submit_final(root, spec, state)
                except OSError:
                    if not protocol.job_exists(root, self.id):  # else: put in by another hit just now
                        raise
            self._kept = True


#: A cache hit answered with a job of this root makes that job young to ``hither-fs gc`` again
#: (:func:`hither_fs.protocol.mark_used`: gc keeps a job handed out again) when it is older than
#: this, in seconds: so a job hit again and again is touched at most this often, not at each
#: hit. Half gc's shortest grace period: any job gc may remove is made young, with minutes to
#: spare for a node whose clock is behind the file system's.
HAND_OUT_AFTER = MIN_GRACE_SECONDS / 2


def _hand_out(root: Root, job_id: str) -> None:
    """A cache hit hands out ``job_id`` of this root again: one ``stat``, and a ``utime`` if
    the job is older than :data:`HAND_OUT_AFTER` (nothing if gc removed it: the hit is
    answered from its entry all the same)."""
    try:
        mtime = os.stat(root.layout.state_file(job_id)).st_mtime
    except OSError:
        return
    if time.time() - mtime > HAND_OUT_AFTER:
        protocol.mark_used(root, job_id)


def _key_of(job: Job) -> str:
    """A job's cache key (a cache hit knows its own without reading a spec)."""
    return job.key if isinstance(job, CacheHit) else job.spec["key"]


def _from_cache(cache: JobCache, entry: Dict[str, Any]) -> Dict[str, Any]:
    """Where a job answered from ``cache``'s ``entry`` got its outcome (its state's ``from_cache``)."""
    origin = entry.get("root")
    return {"key": entry["key"], "job_id": entry["job_id"], "root": origin if isinstance(origin, str) else None,
            "cache": cache.path or "root"}


#: What :meth:`_Batch.prepare` makes of one job: its spec, its upstream jobs, and the cache's
#: answer (a :class:`CacheHit`, :data:`_RERUN`, or None).
_Item = Tuple[Dict[str, Any], Dict[str, Job], Any]
#: The cache's answer for an entry computed by other code, with ``code_change="rerun"``.
_RERUN = object()
#: A function's code object -> the sha1 of its source, for the code check of cache hits.
_code_now: Dict[Any, Optional[str]] = {}


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

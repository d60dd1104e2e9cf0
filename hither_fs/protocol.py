"""The job protocol: every change of a job's status, in one place.

Nothing but this module writes a job's ``state.json``, its tickets or its
claims. It needs no lock that reaches across nodes: on NFS, Lustre, GPFS and
BeeGFS alike, renaming a file that exists once can succeed only once, and
that is the whole of its mutual exclusion.

Tokens
------
A live job is represented by exactly one *token*: an empty file named
``<job id>.<gen>.<attempt>``. Where the token lies says what the job is
waiting for, and whoever moves it owns the job's next step::

    status     its token                                            who moves it next
    pending    pending/<id>.0.1                                     whoever sees its upstream jobs end
    queued     queue/<queue>/<bucket>/<stamp>-<id>.<gen>.<attempt>  a worker claiming it
    running    running/<id>.<gen>.<attempt>.<worker>                that worker (commit, hand-back), or
                                                                    lease recovery once the worker is lost
    finished, error, cancelled: no token at all

``attempt`` is the run the token is for; ``gen`` grows each time a job goes
back to the queue, so a token's name never comes back and a stale process can
never find a later token under an old name.

Transitions
-----------
::

    transition   from -> to                       by                           steps
    submit       - -> pending | queued            the submitter                publish, token
    promote      pending -> queued                anyone who sees it ready     take, state, ticket
    claim        queued -> running                a worker                     rename ticket to running/
    forward      queued -> queued                 a compute resource           rename ticket into its queue
    commit       running -> finished|error|cancelled   the claiming worker     take, state
    requeue      running -> queued                the worker (hand-back) or lease recovery   take, state, ticket
    fail         pending|queued|running -> error  whoever holds the token      take, state
    cancel       pending|queued -> cancelled      anyone                       take, state
                 running -> (request)             anyone                       a request file for the worker,
                                                                               which then commits "cancelled"

*publish*: a new job's directory is built under a temporary name with its
``spec.json`` and first ``state.json`` and renamed into place whole.

*take*: rename the token to ``running/.taken.<taker>.<token>``, where the
taker is the worker (or another process) that takes it. One process can take
a given token; a process that finds it gone has lost (a worker that was
paused past its lease finds out this way, and discards its outcome). The
fence is this one rename, written once, in :func:`_take`.

*state*: the taker writes the next state into the file it took and renames
that file over ``state.json``. So ``state.json`` is replaced only by the one
process that holds the job, and a paused process can never publish late: the
file it would publish was taken away from it. (The submitter writes the first
``state.json`` before anyone can see the job.)

Crash consistency: a process killed between two steps leaves either a token
(whoever looks next carries on: lease recovery, promotion, a claim), or a
final state with a token left over (dropped by whoever finds it), or a taken
token in ``running/`` whose taker is gone: lease recovery judges the taker
like any worker and, once it is lost, moves the job on
(:func:`recover_taken`). What only a crash at the wrong instant can leave
(a published job never released, a waiter marker without its job) is
reported by ``hither-fs fsck`` and put right by ``--repair``.
"""

import contextlib
import enum
import json
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .queue import is_ticket, iter_tickets, queue_names, ticket_token, writer_for
from .root import Root, now_iso
from .runtime import files
from .runtime.files import (CorruptFileError, LinkError, can_refuse_linked_dirs, dumps, listdir, mkdir, overwrite,
                            read_record, remove_quietly, temp_name, with_parents, write_new)
from .runtime.layout import host_label, is_job_id, is_worker_id

log = logging.getLogger("hither_fs.protocol")

DEFAULT_MAX_ATTEMPTS = 3
#: A spec or state bigger than this is damage, not a record (results go to the store when big).
RECORD_LIMIT = files.RECORD_LIMIT


class Status(str, enum.Enum):
    PENDING = "pending"      # waiting for upstream jobs
    QUEUED = "queued"        # ready; a worker will claim it
    RUNNING = "running"      # claimed by a worker
    FINISHED = "finished"
    ERROR = "error"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({Status.FINISHED, Status.ERROR, Status.CANCELLED})
FINAL_VALUES = frozenset(s.value for s in FINAL)


class JobGoneError(Exception):
    """A token names a job whose directory is not in the root (deleted by hand)."""


class JobDirectoryError(CorruptFileError):
    """A job's directory is not a directory: a file, or a symbolic link (which hither_fs
    never follows, so as never to read or write outside the root). Nothing can be
    recorded for such a job."""


@dataclass(frozen=True)
class Token:
    """The name of a live job's token: ``<id>.<gen>.<attempt>[.<worker>]``."""

    job_id: str
    gen: int = 0
    attempt: int = 1
    worker: Optional[str] = None

    @property
    def name(self) -> str:
        base = "{}.{}.{}".format(self.job_id, self.gen, self.attempt)
        return base if self.worker is None else base + "." + self.worker

    @classmethod
    def parse(cls, name: str) -> Optional["Token"]:
        """The token a file name stands for, or None for anything else (temp files, strays)."""
        parts = name.split(".")
        if len(parts) not in (3, 4) or not is_job_id(parts[0]):
            return None
        if not (parts[1].isdigit() and parts[2].isdigit()) or int(parts[2]) < 1:
            return None
        if len(parts) == 4 and not is_worker_id(parts[3]):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else None)

    def claimed_by(self, worker_id: str) -> "Token":
        return Token(self.job_id, self.gen, self.attempt, worker_id)


@dataclass
class Claim:
    """A job a worker holds: its running token, where it lies, and the job's spec."""

    token: Token
    path: str
    spec: Optional[Dict[str, Any]]

    @property
    def job_id(self) -> str:
        return self.token.job_id


@dataclass
class Outcome:
    """How a run ended, as its worker reports it to :func:`commit`.

    ``console`` maps ``stdout``/``stderr`` to ``(live file in the job's directory, size)``
    for output the worker copied into the root while the job ran.
    """

    result: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, Any]] = None
    runtime: Dict[str, Any] = field(default_factory=dict)
    console: Dict[str, Tuple[str, int]] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        if self.result is not None:
            return Status.FINISHED
        if self.error is not None and self.error.get("type") == "JobCancelledError":
            return Status.CANCELLED
        return Status.ERROR


def error_record(type_name: str, message: str, stage: str, module: str = "hither_fs",
                 traceback: str = "", **extra: Any) -> Dict[str, Any]:
    return dict(extra, type=type_name, module=module, message=message, stage=stage, traceback=traceback)


def cancelled_record(job_id: str, why: str) -> Dict[str, Any]:
    return error_record("JobCancelledError", "job {} was cancelled {}".format(job_id, why), "cancelled")


def summary(state: Dict[str, Any]) -> str:
    """The error of a final state in one line ('' when there is none)."""
    err = state.get("error")
    if isinstance(err, dict):
        return "{}: {}".format(err.get("type", "?"), err.get("message", ""))
    return err or ""


# -- reading ---------------------------------------------------------------------

def _read_record(path: str) -> Tuple[Dict[str, Any], os.stat_result]:
    try:
        record, st = read_record(path, limit=RECORD_LIMIT)
    except NotADirectoryError:
        raise JobDirectoryError(os.path.dirname(path), "is a file, not a job directory") from None
    except LinkError:
        if os.path.islink(path):
            raise  # the record itself: damage its job's holder replaces
        job_dir = os.path.dirname(path)  # the job's directory, or its shard: nothing is written below it
        link = job_dir if os.path.islink(job_dir) else os.path.dirname(job_dir)
        raise JobDirectoryError(job_dir, "is or lies below a symbolic link ({} -> {}), not a job directory; "
                                "hither_fs does not follow it out of the root".format(
                                    link, os.readlink(link) if os.path.islink(link) else "?")) from None
    if not isinstance(record, dict):
        raise CorruptFileError(path, "not a JSON object")
    return record, st


def read_spec(root: Root, job_id: str) -> Dict[str, Any]:
    return _read_record(root.layout.spec_file(job_id))[0]


def read_state(root: Root, job_id: str) -> Dict[str, Any]:
    """A job's state, read afresh (open by name: a waiter on another node sees a new
    state as soon as the rename that published it is done)."""
    return _read_record(root.layout.state_file(job_id))[0]


#: ``job.set_label()``'s record in the job's directory, and the most of it that is read.
LABEL_FILE, LABEL_LIMIT = "label.json", 64 << 10


def read_label(root: Root, job_id: str) -> Optional[str]:
    """The label ``job.set_label()`` gave a job (its ``label.json``), or None if it has none.
    ``CorruptFileError`` for a record that is not a label."""
    path = root.layout.job_file(job_id, LABEL_FILE)
    try:
        record = read_record(path, limit=LABEL_LIMIT)[0]
    except FileNotFoundError:
        return None
    if isinstance(record, dict) and isinstance(record.get("label"), str):
        return record["label"]
    raise CorruptFileError(path, "not a label record")


def mark_used(root: Root, job_id: str) -> bool:
    """Make a final job young again (its ``state.json``'s mtime, by which ``hither-fs gc``
    judges age) as it is handed out once more - a cache hit answered with it. False if it
    is gone (removed by gc just now)."""
    try:
        os.utime(root.layout.state_file(job_id))
        return True
    except FileNotFoundError:
        return False


def check_job_dir(root: Root, job_id: str) -> None:
    """Raise :class:`JobDirectoryError` unless the job's directory (and its shard) is a real
    directory (or missing). Free where the kernel refuses links below ``jobs/`` as it opens
    a record (``openat2``: the read itself raises); otherwise two ``lstat``, paid once per
    job by a worker and once per ``Job`` object."""
    if can_refuse_linked_dirs():
        return
    path = root.layout.job_dir(job_id)
    for part in (os.path.dirname(path), path):  # its shard, then itself
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise JobDirectoryError(path, "is or lies below a symbolic link ({} -> {}), not a job directory; "
                                    "hither_fs does not follow it out of the root".format(part, os.readlink(part)))
        if not stat.S_ISDIR(st.st_mode):
            raise JobDirectoryError(path, "is not a job directory ({} has mode {:o})".format(part, st.st_mode))


def job_exists(root: Root, job_id: str) -> bool:
    return os.path.lexists(root.layout.spec_file(job_id))


def read_spec_checked(root: Root, job_id: str) -> Tuple[Dict[str, Any], Optional[str]]:
    """The spec a worker is about to run, and why it must not run it (or None): a spec
    that someone other than the root's user (or, in a group-shared root, group) owns
    or can write could make the worker run their code."""
    check_job_dir(root, job_id)
    path = root.layout.spec_file(job_id)
    spec, st = _read_record(path)
    return spec, root.unsafe_stat_reason(path, st, allow_group_write=True)


# -- the one exclusive step ---------------------------------------------------------

_taker = {"id": None, "pid": None}


def set_taker(taker_id: str) -> None:
    """Name the tokens this process takes after ``taker_id`` (a worker's id, so that
    lease recovery judges them by the worker's heartbeat)."""
    _taker.update(id=taker_id, pid=os.getpid())


def taker() -> str:
    """Who this process is when it takes a token: its worker id, or a name of its own."""
    if _taker["pid"] != os.getpid():  # a new process (or a forked one): a name of its own
        _taker.update(id="p-{}-{}-{}".format(host_label(), os.getpid(), uuid.uuid4().hex[:6]), pid=os.getpid())
    return _taker["id"]


TAKEN = ".taken."


def taken_path(root: Root, taker_id: str, token_name: str) -> str:
    """Where a token taken by ``taker_id`` lies until its taker publishes the next state."""
    return os.path.join(root.layout.running, "{}{}.{}".format(TAKEN, taker_id, token_name))


def parse_taken(name: str) -> Optional[Tuple[str, Token]]:
    """``(taker, token)`` of a taken token's file name, or None."""
    if not name.startswith(TAKEN):
        return None
    taker_id, _, token_name = name[len(TAKEN):].partition(".")
    token = Token.parse(token_name)
    return (taker_id, token) if token is not None and is_worker_id(taker_id) else None


def _take(root: Root, token_path: str, job_id: str) -> Optional[str]:
    """Take a job's token: rename it to ``running/.taken.<taker>.<token>``.

    Returns that file's path, or None if someone else took the token first.
    This is the fence of the whole protocol: exactly one process can rename a
    name that exists once. The taken file stays in ``running/`` until its
    taker publishes the next state, so that lease recovery finds it should
    the taker die in between (see :func:`recover_taken`).
    """
    name = os.path.basename(token_path)
    held = taken_path(root, taker(), ticket_token(name) if is_ticket(name) else name)
    try:
        os.rename(token_path, held)
        return held
    except FileNotFoundError:
        if os.path.lexists(held):
            return held  # our rename happened, only its answer was lost (an NFS retransmission)
        return None


@dataclass
class Held:
    """A token this process has taken: the file, and the job's state as it was then."""

    path: str
    state: Dict[str, Any]


@contextlib.contextmanager
def _holding(root: Root, token_path: str, job_id: str, taken: bool = False,
             dir_checked: bool = False) -> Iterator[Optional[Held]]:
    """Take the token for a block (``taken``: ``token_path`` is one this process has
    taken already), or yield None if someone else has it.

    A job whose directory is not a directory (see :func:`check_job_dir`; ``dir_checked``:
    the caller has just looked) loses its token: nothing can be recorded for it, and
    nothing is written through a symbolic link out of the root.

    Right after the take the job's state is read: a job that is final already
    (a token left over by a crash, or a repair, can come back after its job
    ended) keeps its final state - the token is dropped and nothing is
    published. If the block fails (say, the disk is full), the token goes back
    where it was, so the job is exactly as before. A job whose directory is
    gone (deleted by hand) loses its token.
    """
    held = token_path if taken else _take(root, token_path, job_id)
    if held is None:
        yield None
        return
    try:
        if not dir_checked:
            check_job_dir(root, job_id)
        state = read_state(root, job_id)
    except (FileNotFoundError, JobDirectoryError) as exc:
        remove_quietly(held)
        raise JobGoneError("{} names job {}, which is not in {}{}".format(
            token_path, job_id, root.path, "" if isinstance(exc, FileNotFoundError) else ": {}".format(exc))) from None
    except CorruptFileError:
        state = {}  # damaged: whoever holds the job writes a good one
    if state.get("status") in FINAL_VALUES:
        remove_quietly(held)
        yield None
        return
    try:
        yield Held(held, state)
    except JobGoneError:
        remove_quietly(held)
        raise
    except BaseException:
        if os.path.lexists(held):
            with_parents(lambda: os.rename(held, token_path), os.path.dirname(token_path))
        raise


def _publish(root: Root, held: Held, job_id: str, state: Dict[str, Any]) -> bool:
    """Write ``state`` into the file this process took and rename it over state.json.

    False if the file was taken away meanwhile (this process was judged lost while
    it held it, and :func:`recover_taken` moved the job on): nothing is published.
    """
    state["updated"] = now_iso()
    state["writer"] = "{}/{}".format(taker(), uuid.uuid4().hex[:8])
    try:
        overwrite(held.path, dumps(state))
        os.rename(held.path, root.layout.state_file(job_id))
    except FileNotFoundError:
        if os.path.lexists(held.path):
            raise JobGoneError("job {} has no directory in {}".format(job_id, root.path)) from None
        try:  # our rename may have happened, with only its answer lost (an NFS retransmission)
            return read_state(root, job_id).get("writer") == state["writer"]
        except (OSError, CorruptFileError):
            return False
    return True


# -- submit ----------------------------------------------------------------------------

def _publish_job(root: Root, spec: Dict[str, Any], state: Dict[str, Any], spec_bytes: Optional[bytes] = None) -> None:
    """Make a job's directory appear whole: spec.json and state.json in a hidden
    directory, renamed into place (no reader ever sees half a job). ``spec_bytes``:
    ``dumps(spec)``, when the caller has made it already (:mod:`hither_fs.submit`, faster)."""
    job_dir = root.layout.job_dir(spec["id"])
    if spec_bytes is None:
        spec_bytes = dumps(spec)
    if len(spec_bytes) > RECORD_LIMIT:
        raise too_big_arguments(len(spec_bytes))
    tmp = temp_name(job_dir)
    with_parents(lambda: mkdir(tmp), os.path.dirname(tmp))
    try:
        write_new(os.path.join(tmp, "spec.json"), spec_bytes)
        state["updated"] = now_iso()
        write_new(os.path.join(tmp, "state.json"), dumps(state))
        os.rename(tmp, job_dir)
    except BaseException:
        for name in ("spec.json", "state.json"):
            remove_quietly(os.path.join(tmp, name))
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
        raise


def submit(root: Root, spec: Dict[str, Any], spec_bytes: Optional[bytes] = None) -> Status:
    """Put a new job in the root: :func:`publish` its directory, then :func:`release` it."""
    publish(root, spec, spec_bytes)
    return release(root, spec)


def publish(root: Root, spec: Dict[str, Any], spec_bytes: Optional[bytes] = None) -> None:
    """Make a new job's directory appear, not yet in any queue (no token: nobody runs it).

    ``spec`` names the job's ``id``, ``queue`` and ``upstream`` jobs.
    """
    status = Status.PENDING if spec.get("upstream") else Status.QUEUED
    _publish_job(root, spec, {"status": status.value, "attempt": 0, "queue": spec["queue"], "submitted": now_iso()},
                 spec_bytes)


def release(root: Root, spec: Dict[str, Any]) -> Status:
    """Give a published job its token: a ticket in its queue, or - if it has upstream jobs
    that have not all finished - a pending token. Returns its status."""
    job_id, queue = spec["id"], spec["queue"]
    upstream = list(spec.get("upstream") or [])
    token = Token(job_id)
    writer = writer_for(root.layout)
    if not upstream:
        writer.place(queue, token.name)
        writer.ring(queue)
        return Status.QUEUED
    # Registered as a waiter first, the upstream states read second; whoever finishes
    # an upstream job publishes its state first and looks for waiters second. So either
    # that finisher sees our marker, or we see its final state: never neither. (The
    # markers come before the token: a submitter killed in between leaves a job without
    # a token, which fsck reports, not a token that no finisher will ever look for.)
    for up in upstream:
        if is_job_id(up):
            _mark_waiting(root, up, job_id)
    pending = os.path.join(root.layout.pending, token.name)
    with_parents(lambda: write_new(pending), root.layout.pending)
    return promote(root, job_id, spec) or Status.PENDING


def _mark_waiting(root: Root, upstream: str, job_id: str) -> None:
    """Put ``job_id``'s marker in ``upstream``'s ``downstream/``. Only that directory is
    made if missing, never the job's own: an upstream job removed (by ``hither-fs gc``)
    stays removed, and the waiting job fails saying so."""
    ddir = root.layout.downstream_dir(upstream)
    marker = os.path.join(ddir, job_id)
    for _ in range(2):
        try:
            write_new(marker)
            return
        except FileExistsError:
            return
        except FileNotFoundError:
            try:
                mkdir(ddir)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError):
                return  # the upstream job is gone: promote() fails this job with that


def finish_unreleased(root: Root, spec: Dict[str, Any], result: Dict[str, Any], **extra: Any) -> None:
    """Finish a job that was published and never released (no token: its submitter alone
    may move it) with a cached result, instead of queueing it. Unlike :func:`withdraw`,
    for a job others may know already (another submitter that attached to it)."""
    job_id = spec["id"]
    prior = read_state(root, job_id)
    state = _final(spec, Token(job_id), prior, Status.FINISHED, result=result, cached=True, **extra)
    state["updated"] = now_iso()
    files.write_bytes(root.layout.state_file(job_id), dumps(state))
    notify_downstream(root, job_id)  # (jobs that an attached submitter made wait for it)


def withdraw(root: Root, job_id: str) -> None:
    """Remove a job that was published but never released (nobody else knows its id)."""
    job_dir = root.layout.job_dir(job_id)
    for name in ("spec.json", "state.json"):
        remove_quietly(os.path.join(job_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(job_dir)


def submit_final(root: Root, spec: Dict[str, Any], state: Dict[str, Any], spec_bytes: Optional[bytes] = None) -> None:
    """Put a job in the root that is final from the start (a cache hit): no token."""
    _publish_job(root, spec, state, spec_bytes)


# -- pending -> queued -----------------------------------------------------------------

def _upstream_verdict(root: Root, job_id: str, spec: Dict[str, Any]) -> Any:
    """None: ready to queue; "wait": not yet; a dict: the error to fail the job with."""
    verdict = None
    for up in spec.get("upstream") or []:
        if not is_job_id(up):
            # never a path: a hand-edited spec must not make anyone read outside the root
            return error_record("ValueError", "{} names upstream job {!r}, which is not a hither_fs job id "
                                "(expected 16 hex digits)".format(root.layout.spec_file(job_id), up),
                                "waiting for upstream jobs", module="builtins")
        try:
            up_state = read_state(root, up)
        except FileNotFoundError:
            if _set_aside(root, up) or os.path.isdir(root.layout.job_dir(up)):
                verdict = "wait"  # hither-fs gc is removing it or put it back just now: looked at again later
                continue
            return error_record("UpstreamJobError", "upstream job {} is not in the root".format(up),
                                "waiting for upstream jobs", upstream=up)
        except CorruptFileError as exc:
            return error_record("CorruptFileError", str(exc), "waiting for upstream jobs")
        status = up_state.get("status")
        if status in (Status.ERROR, Status.CANCELLED):
            try:
                up_fn = read_spec(root, up).get("function", {}).get("name", "?")
            except (OSError, CorruptFileError):
                up_fn = "?"
            return error_record("UpstreamJobError", "upstream job {} ({}) {}: {}".format(
                up, up_fn, "was cancelled" if status == Status.CANCELLED else "failed", summary(up_state)),
                "waiting for upstream jobs", upstream=up)
        if status != Status.FINISHED:
            verdict = "wait"
    return verdict


def _set_aside(root: Root, job_id: str) -> bool:
    """Whether ``hither-fs gc`` has the job's directory renamed aside right now (see
    :func:`hither_fs.gc.remove_job`: it puts back a job handed out again meanwhile)."""
    shard, name = os.path.split(root.layout.job_dir(job_id))
    return any(n.startswith(".{}.tmp-".format(name)) for n in listdir(shard))


def promote(root: Root, job_id: str, spec: Optional[Dict[str, Any]] = None) -> Optional[Status]:
    """Queue a pending job whose upstream jobs all finished, or fail it if one of them
    failed. Returns the new status, or None if it must wait (or someone else moved it)."""
    token = Token(job_id)
    path = os.path.join(root.layout.pending, token.name)
    try:
        spec = spec if spec is not None else read_spec(root, job_id)
    except FileNotFoundError:
        return None
    except CorruptFileError as exc:
        return Status.ERROR if fail(root, path, job_id, error_record(
            "CorruptFileError", str(exc), "waiting for upstream jobs")) else None
    verdict = _upstream_verdict(root, job_id, spec)
    if verdict == "wait":
        return None
    with _holding(root, path, job_id) as held:
        if held is None:
            return None
        if verdict is None:
            state = dict(held.state, status=Status.QUEUED.value, attempt=0, queue=spec["queue"])
        else:
            state = _final(spec, token, held.state, Status.ERROR, error=verdict)
        if not _publish(root, held, job_id, state):
            return None
    if verdict is None:
        writer = writer_for(root.layout)
        writer.place(spec["queue"], token.name)
        writer.ring(spec["queue"])
        return Status.QUEUED
    notify_downstream(root, job_id)
    return Status.ERROR


def notify_downstream(root: Root, job_id: str, tick: Optional[Callable[[], None]] = None) -> int:
    """After a job became final: promote (or fail) the jobs waiting for it. One open when
    none waits. ``tick`` is called after every 50 of them (a worker beats meanwhile).
    Returns how many changed. A marker whose promotion failed (say, a full disk) stays,
    for the pending sweep (:func:`sweep_pending`) to try again."""
    ddir = root.layout.downstream_dir(job_id)
    try:
        waiting = os.listdir(ddir)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    changed = 0
    for n, down in enumerate(waiting, 1):
        if is_job_id(down):
            try:
                changed += promote(root, down) is not None
            except (OSError, CorruptFileError, JobGoneError):
                continue  # keep its marker
        remove_quietly(os.path.join(ddir, down))
        if tick is not None and n % 50 == 0:
            tick()
    with contextlib.suppress(OSError):
        os.rmdir(ddir)
    return changed


def live_status(root: Root, job_id: str, state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` as a person means it: a queued job that a worker has claimed is
    ``running`` (the claim, not state.json, says so: see the module docstring)."""
    if state.get("status") != Status.QUEUED:
        return state
    for token, _ in running_claims(root, job_id):
        return dict(state, status=Status.RUNNING.value, worker=token.worker, attempt=token.attempt,
                    gen=token.gen)
    return state


def pending_tokens(root: Root) -> List[Token]:
    return [t for t in (Token.parse(n) for n in listdir(root.layout.pending)) if t is not None]


# -- queued -> running -------------------------------------------------------------------

def claim(root: Root, ticket_path: str, worker_id: str, spec: Optional[Dict[str, Any]] = None) -> Optional[Claim]:
    """Claim the job behind a ticket: rename the ticket to ``running/<token>.<worker>``.

    Returns None if another worker got there first (or the ticket is gone).
    ``spec`` is the job's spec if the caller read it before (to see whether the job
    fits); the caller reads it after claiming otherwise.
    """
    token = Token.parse(ticket_token(os.path.basename(ticket_path)))
    if token is None:
        return None
    mine = token.claimed_by(worker_id)
    path = os.path.join(root.layout.running, mine.name)
    try:
        os.rename(ticket_path, path)
    except FileNotFoundError:
        return None  # (running/ itself is made with the root and never removed)
    return Claim(mine, path, spec)


def scan_running(root: Root) -> Tuple[List[Tuple[Token, str]], List[Tuple[str, Token, str]]]:
    """One listing of ``running/``: the claims ``(token, path)``, and the tokens a process
    has taken and not yet replaced by a state ``(taker, token, path)`` (normally none
    for more than an instant)."""
    claims, taken = [], []
    for name in listdir(root.layout.running):
        path = os.path.join(root.layout.running, name)
        parsed = parse_taken(name)
        if parsed is not None:
            taken.append((parsed[0], parsed[1], path))
            continue
        token = Token.parse(name)
        if token is not None and token.worker is not None:
            claims.append((token, path))
    return claims, taken


def taken_tokens(root: Root) -> List[Tuple[str, Token, str]]:
    return scan_running(root)[1]


def running_claims(root: Root, job_id: Optional[str] = None) -> List[Tuple[Token, str]]:
    """Every claim in ``running/`` (one listing), or those of one job."""
    return [(token, path) for token, path in scan_running(root)[0] if job_id in (None, token.job_id)]


# -- running -> final ----------------------------------------------------------------------

def _final(spec: Dict[str, Any], token: Token, prior: Dict[str, Any], status: Status,
           result: Optional[Dict[str, Any]] = None, error: Optional[Dict[str, Any]] = None,
           runtime: Optional[Dict[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "status": status.value,
        "attempt": token.attempt if runtime else prior.get("attempt", 0),
        "queue": prior.get("queue") or spec.get("queue"),
        "submitted": prior.get("submitted") or spec.get("created"),
        "finished": now_iso(),
    }
    for key in ("history", "handed_back", "served_by"):
        if prior.get(key):
            state[key] = prior[key]
    if runtime:
        state["worker"] = token.worker
        state["gen"] = token.gen
        state["started"] = runtime.get("start")
        state["runtime"] = runtime
    if result is not None:
        state["result"] = result
    if error is not None:
        state["error"] = error
    state.update(extra)
    return state


def commit(root: Root, claim: Claim, outcome: Outcome, tick: Optional[Callable[[], None]] = None,
           promoted: Optional[Callable[[int], None]] = None) -> Optional[Status]:
    """Record how a claimed run ended, if the claim still holds.

    Returns the final status, or None if the claim was lost meanwhile (the
    worker was judged lost and the job went back to the queue): then the
    outcome is discarded and the live console files are removed. If writing
    fails (a full disk) the claim is restored and the error raised: the job
    stays this worker's, to commit again or hand back.

    Then the jobs waiting for this one are promoted (``tick`` is called now
    and then meanwhile: a job many others wait for takes a while), and
    ``promoted`` is told how many changed, if any did.
    """
    job_id = claim.job_id
    with _holding(root, claim.path, job_id, dir_checked=True) as held:  # checked when claimed
        if held is None:
            for live, _ in outcome.console.values():
                remove_quietly(live)
            return None
        status = outcome.status
        console = {name: size for name, (_, size) in outcome.console.items() if size > 0}
        extra = {"console": console} if console else {}
        result, error = outcome.result, outcome.error
        size = record_size(result) if result is not None else 0
        if size > RECORD_LIMIT:  # it could never be read back: an error now, not a broken record
            status, result, error = Status.ERROR, None, error_record(
                "ValueError", "the result of job {} is {} MB of JSON, more than a record may hold ({} MB): "
                "return big data as numpy arrays or hi.File, which go to the store".format(
                    job_id, size >> 20, RECORD_LIMIT >> 20), "recording the result", module="builtins")
        if not _publish(root, held, job_id, _final(claim.spec, claim.token, held.state, status,
                                                   result=result, error=error,
                                                   runtime=outcome.runtime or {"worker": claim.token.worker},
                                                   **extra)):
            for live, _ in outcome.console.values():
                remove_quietly(live)
            return None  # taken from this worker while it wrote: judged lost (stopped past its lease)
    # The commit is made: what follows must not make the caller try it again (it would find
    # its claim gone and drop the rest). A step that fails is left to the pending sweep
    # (promotions) and to fsck (a live console file, a marker), and said in the log.
    try:
        # console output under its final names only now that this run is the one that counts
        # (a reader in between finds the live files: see hither_fs.job.Job.get_console_output)
        for name, (live, size) in outcome.console.items():
            if size > 0:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(live, root.layout.job_file(job_id, name + ".txt"))
            else:
                remove_quietly(live)
        changed = notify_downstream(root, job_id, tick)
        if changed and promoted is not None:
            promoted(changed)
        drop_waiting_markers(root, job_id, claim.spec)
    except OSError as exc:
        log.warning("job %s is %s, but what follows its commit failed (the pending sweep promotes the jobs "
                    "waiting for it): %s", job_id, status.value, exc)
    return status


def too_big_arguments(size: int, where: str = "") -> ValueError:
    return ValueError("{}the arguments of this job are {} MB of JSON, more than a record may hold ({} MB): pass "
                      "big data as numpy arrays or hi.File, which go to the store".format(
                          where, size >> 20, RECORD_LIMIT >> 20))


def record_size(value: Any) -> int:
    """The bytes ``value`` takes in a record - or, when that cannot reach ``RECORD_LIMIT``,
    the size of its compact form, which the fast C encoder makes: a record's indentation
    adds at most a newline and one space per level of nesting (at most 100: see
    :mod:`hither_fs.runtime.serialization`) to each token, so a compact form under
    ``RECORD_LIMIT / 128`` fits; only a bigger one is measured as written."""
    compact = len(json.dumps(value, allow_nan=True))
    return compact if compact < RECORD_LIMIT // 128 else len(dumps(value))


def drop_waiting_markers(root: Root, job_id: str, spec: Dict[str, Any]) -> None:
    """Once a job is final, its markers in its upstream jobs' ``downstream/`` protect nothing
    (they keep an upstream job from ``hither-fs gc`` while this one may still read its
    result): removed, with the directory when it empties. One unlink per upstream job."""
    for up in spec.get("upstream") or []:
        if is_job_id(up):
            ddir = root.layout.downstream_dir(up)
            if remove_quietly(os.path.join(ddir, job_id)):
                with contextlib.suppress(OSError):
                    os.rmdir(ddir)  # only if no other job waits there


def requeue(root: Root, token: Token, path: str, why: str, *, counted: bool = True,
            cancel_requested: bool = False) -> Optional[Status]:
    """Hand a running job back to the queue, from its worker or from lease recovery.

    A counted run (its worker was lost) brings the job closer to failing with
    ``WorkerLostError`` after ``max_attempts``; an uncounted one (a worker that
    saw its time limit coming and gave the job back in time) does not, though
    more than ``max_attempts`` hand-backs fail it too. Returns the new status,
    or None if the token was gone (someone else moved the job).
    """
    with _holding(root, path, token.job_id) as held:
        if held is None:
            return None
        status, state, queue, new = _requeued(root, token, held.state, why, counted, cancel_requested)
        if not _publish(root, held, token.job_id, state):
            return None
    _after_requeue(root, token.job_id, status, queue, new)
    return status


def _requeued(root: Root, token: Token, prior: Dict[str, Any], why: str, counted: bool,
              cancel_requested: bool = False):
    """What a run ending this way makes of its job (whose state was ``prior``):
    ``(status, new state, queue, new token)``."""
    job_id = token.job_id
    new = Token(job_id, token.gen + 1, token.attempt + 1 if counted else token.attempt)
    try:
        spec = read_spec(root, job_id)
    except (OSError, CorruptFileError):
        spec = {}
    queue = prior.get("queue") or spec.get("queue") or "?"
    max_attempts = int(spec.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)
    history = list(prior.get("history") or [])
    history.append({"attempt": token.attempt, "worker": token.worker, "ended": now_iso(),
                    "why": why, "counted": counted})
    handed_back = int(prior.get("handed_back") or 0) + (0 if counted else 1)
    base = dict(prior, history=history, handed_back=handed_back, queue=queue, attempt=token.attempt,
                submitted=prior.get("submitted") or spec.get("created"))
    failure = None
    status = Status.ERROR
    if cancel_requested:
        failure, status = cancelled_record(job_id, "while running (its worker was lost)"), Status.CANCELLED
    elif counted and token.attempt >= max_attempts:
        failure = error_record("WorkerLostError", "worker lost {} times, giving up (last: {})".format(
            token.attempt, why), "running")
    elif not counted and handed_back > max_attempts:
        failure = error_record("WorkerLostError", "handed back {} times before it could finish (last: {}){}".format(
            handed_back, why, "; give the allocations a longer time limit" if "time limit" in why else ""),
            "running")
    elif not spec:
        failure = error_record("CorruptFileError", "spec.json of job {} cannot be read".format(job_id),
                               "requeueing")
    if failure is not None:
        return status, _final(spec, token, base, status, error=failure), queue, new
    return Status.QUEUED, dict(base, status=Status.QUEUED.value, requeued=why), queue, new


def _after_requeue(root: Root, job_id: str, status: Status, queue: str, new: Token) -> None:
    if status == Status.QUEUED:
        writer = writer_for(root.layout)
        writer.place(queue, new.name, front=True)
        writer.ring(queue)
    else:
        notify_downstream(root, job_id)


def recover_taken(root: Root, path: str, why: str) -> Optional[Status]:
    """Move on a job whose token was taken by a process that was then lost (killed,
    stopped past its lease) before it published the next state.

    The lost taker may have opened the file it took and may still write into it
    if it resumes, so that file is never published: this process takes a fresh
    token of its own first, then moves the old file out of the taker's reach
    (so that the taker, should it resume, finds it gone and publishes nothing)
    and drops it. The job then goes on as if its taker had been lost before it
    took the token: a claimed job is handed back (the run counts), a pending or
    queued one gets its token back.
    """
    parsed = parse_taken(os.path.basename(path))
    if parsed is None:
        return None
    _, token = parsed
    job_id = token.job_id
    mine = taken_path(root, taker(), token.name)
    try:
        write_new(mine)
    except FileExistsError:
        return None  # this process holds that token already
    trash = temp_name(path)
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        remove_quietly(mine)
        return None  # published after all, or recovered by someone else
    remove_quietly(trash)
    with _holding(root, mine, job_id, taken=True) as held:
        if held is None:
            return None
        if token.worker is not None:  # it was running: as a lost run
            status, state, queue, new = _requeued(root, token, held.state, why, counted=True)
            if not _publish(root, held, job_id, state):
                return None
        else:
            status = Status(held.state.get("status") or Status.QUEUED)
            queue = held.state.get("queue") or read_spec(root, job_id)["queue"]
            new = Token(job_id, token.gen + 1, token.attempt)
            if status == Status.PENDING:
                with_parents(lambda: os.rename(held.path, os.path.join(root.layout.pending, Token(job_id).name)),
                             root.layout.pending)
            else:
                writer = writer_for(root.layout)
                with_parents(lambda: os.rename(held.path, writer.ticket_path(queue, new.name, front=True)),
                             os.path.dirname(writer.ticket_path(queue, new.name, front=True)))
    if token.worker is not None:
        _after_requeue(root, job_id, status, queue, new)
    elif status == Status.PENDING:
        promote(root, job_id)
    else:
        writer_for(root.layout).ring(queue, force=True)
    return status


def fail(root: Root, token_path: str, job_id: str, error: Dict[str, Any],
         status: Status = Status.ERROR) -> bool:
    """Make a job final with ``error`` (a damaged record, a refusal, a failed upstream
    job), taking whatever token it has at ``token_path``. False if it was gone."""
    name = os.path.basename(token_path)
    token = Token.parse(name) or Token.parse(ticket_token(name)) or Token(job_id)
    try:
        spec = read_spec(root, job_id)
    except (OSError, CorruptFileError):
        spec = {}
    try:
        with _holding(root, token_path, job_id) as held:
            if held is None:
                return False
            if not _publish(root, held, job_id, _final(spec, token, held.state, status, error=error)):
                return False
    except JobGoneError:
        return False
    notify_downstream(root, job_id)
    return True


def fail_queue(root: Root, queue: str, error: Dict[str, Any]) -> int:
    """Fail every job of ``queue`` that is queued or pending (nothing can ever run them: their
    Slurm allocation was refused, their local workers cannot start); return how many."""
    failed = 0
    for path, name in list(iter_tickets(root.layout, queue)):
        token = Token.parse(ticket_token(name))
        if token is not None:
            failed += fail(root, path, token.job_id, error)
    for token in pending_tokens(root):
        try:
            if read_spec(root, token.job_id).get("queue") != queue:
                continue
        except (OSError, CorruptFileError):
            continue
        failed += fail(root, os.path.join(root.layout.pending, token.name), token.job_id, error)
    return failed


# -- cancel ---------------------------------------------------------------------------------

@dataclass
class Found:
    """Where a live job's token lies."""

    status: Status
    path: str
    token: Token


def find_tokens(root: Root, job_ids: Optional[set] = None, queues: Optional[List[str]] = None) -> Dict[str, Found]:
    """Where the tokens of live jobs are: one pass over ``pending/``, ``running/`` and the
    queues (all of them unless ``queues`` is given). For cancelling and checking, not for
    anything done per job."""
    found: Dict[str, Found] = {}

    def want(token: Optional[Token]) -> bool:
        return token is not None and (job_ids is None or token.job_id in job_ids)
    for token in pending_tokens(root):
        if want(token):
            found[token.job_id] = Found(Status.PENDING, os.path.join(root.layout.pending, token.name), token)
    for token, path in running_claims(root):
        if want(token):
            found[token.job_id] = Found(Status.RUNNING, path, token)
    for q in queues if queues is not None else queue_names(root.layout):
        for path, name in iter_tickets(root.layout, q):
            token = Token.parse(ticket_token(name))
            if want(token):
                found[token.job_id] = Found(Status.QUEUED, path, token)
    return found


def has_token(root: Root, job_id: str) -> bool:
    """Whether a job has a token anywhere - ``pending/``, a queue, ``running/`` (a claim, or
    a token being committed) - looked for in the order tokens move, so that one moving on
    while this looks is still seen. For a check right before acting on a job that seemed
    to have none (fsck); a token moving back (a hand-back) rewrites the state first."""
    if any(token.job_id == job_id for token in pending_tokens(root)):
        return True
    for q in queue_names(root.layout):
        for _, name in iter_tickets(root.layout, q):
            token = Token.parse(ticket_token(name))
            if token is not None and token.job_id == job_id:
                return True
    claims, taken = scan_running(root)
    return any(token.job_id == job_id for token, _ in claims) or any(token.job_id == job_id for _, token, _ in taken)


def request_cancel(root: Root, worker_id: str, job_id: str) -> None:
    """Ask a worker to kill a job it runs (it commits the job as cancelled)."""
    path = root.layout.cancel_request(worker_id, job_id)
    with contextlib.suppress(FileExistsError):
        with_parents(lambda: write_new(path), os.path.dirname(path))


def cancel(root: Root, job_id: str, found: Optional[Found] = None, tries: int = 20) -> Status:
    """Cancel a job: a pending or queued job never runs; a running one is killed by its
    worker (then this returns ``RUNNING``: the request is made). Returns the status after:
    a job whose token another process holds the whole time (it is being moved, or its
    holder is stopped) stays as it was, and its status says so."""
    state: Dict[str, Any] = {}
    check_job_dir(root, job_id)
    for i in range(tries):
        try:
            state = read_state(root, job_id)
        except JobDirectoryError:
            raise  # nothing can be recorded for it: say so
        except CorruptFileError:
            state = {}
        if state.get("status") in FINAL_VALUES:
            return Status(state["status"])
        if found is None or i:
            try:
                queue = [read_spec(root, job_id)["queue"], state.get("queue")]
            except (OSError, CorruptFileError, KeyError):
                queue = []
            queue = [q for q in dict.fromkeys(queue) if q]
            found = find_tokens(root, {job_id}, queue).get(job_id) or (
                find_tokens(root, {job_id}).get(job_id) if queue else None)
        if found is not None:
            if found.status == Status.RUNNING:
                request_cancel(root, found.token.worker, job_id)
                return Status.RUNNING
            if fail(root, found.path, job_id, cancelled_record(job_id, "before it ran"), Status.CANCELLED):
                return Status.CANCELLED
        # between two places (being claimed, handed back, its token taken for a moment), or
        # not yet visible in this node's listings: look again
        time.sleep(min(0.5, 0.01 * (2 ** i)))
    return Status(state.get("status", "queued"))


# -- compute resources ---------------------------------------------------------------------

def forward(root: Root, ticket_path: str, target_queue: str, **extra: Any) -> bool:
    """Send a queued job to another queue (a compute resource hands its jobs to its own
    handler's queue); ``extra`` goes into its state (``served_by``). False if the ticket
    was gone."""
    name = ticket_token(os.path.basename(ticket_path))
    token = Token.parse(name)
    if token is None:
        return False
    job_id = token.job_id
    with _holding(root, ticket_path, job_id) as held:
        if held is None:
            return False
        if not _publish(root, held, job_id, dict(held.state, queue=target_queue, **extra)):
            return False
    writer = writer_for(root.layout)
    writer.place(target_queue, Token(job_id, token.gen + 1, token.attempt).name)
    writer.ring(target_queue)
    return True


def finish_from_cache(root: Root, ticket_path: str, job_id: str, result: Dict[str, Any], **extra: Any) -> bool:
    """Finish a queued job with a cached result instead of running it."""
    token = Token.parse(ticket_token(os.path.basename(ticket_path))) or Token(job_id)
    spec = read_spec(root, job_id)
    with _holding(root, ticket_path, job_id) as held:
        if held is None:
            return False
        if not _publish(root, held, job_id, _final(spec, token, held.state, Status.FINISHED,
                                                   result=result, cached=True, **extra)):
            return False
    notify_downstream(root, job_id)
    return True


# -- repair --------------------------------------------------------------------------------------

def add_missing_token(root: Root, job_id: str, state: Dict[str, Any]) -> None:
    """Give a live job that has no token its token (``fsck --repair``, after a crash
    between publishing a job and releasing it, or between a hand-back's state and its
    ticket). The caller has made sure that no token exists."""
    history = state.get("history") or []
    if not history:
        release(root, read_spec(root, job_id))  # exactly what its submitter did not get to do
        return
    writer = writer_for(root.layout)
    writer.place(state["queue"], Token(job_id, len(history), int(state.get("attempt") or 0) + 1).name, front=True)
    writer.ring(state["queue"], force=True)


def sweep_pending(root: Root, last_looked: Dict[str, float], now: float, min_age: float = 30.0,
                  budget: int = 10) -> int:
    """The safety net of promotion: pending jobs not looked at for ``min_age`` seconds (on
    the caller's clock ``now``; never, for jobs it has not seen before) are looked at
    again, ``budget`` at most per call, longest-waiting first.

    Promotion normally happens when an upstream job ends (:func:`notify_downstream`);
    this catches the rest (a finisher killed in between, a listing that was stale).
    """
    tokens = pending_tokens(root)
    live = {t.job_id for t in tokens}
    for job_id in list(last_looked):
        if job_id not in live:
            del last_looked[job_id]
    changed = 0
    due = [t.job_id for t in tokens if now - last_looked.get(t.job_id, -1e18) >= min_age]
    for job_id in sorted(due, key=lambda j: last_looked.get(j, -1e18))[:budget]:
        last_looked[job_id] = now
        try:
            changed += promote(root, job_id) is not None
        except (OSError, CorruptFileError, JobGoneError):
            continue
    return changed

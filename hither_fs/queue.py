"""A job's life on the bus: enqueue, promote, claim, commit, cancel, recover.

Every change of a job's status happens under that job's lock and ends with
one atomic rename of ``state.json`` - the commit point. Tickets (empty-ish
files in ``queue/``, ``pending/`` and ``running/``) are indexes that let
workers find live work without looking at finished jobs; the state file is
always the truth, and a ticket that disagrees with it is simply dropped.
"""

import os
import shutil
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import filelock

from .root import (CANCELLED, ERROR, FINAL_STATUSES, FINISHED, PENDING, QUEUED, RUNNING,
                   Root, now_iso)
from .runtime.files import CorruptFileError, read_json, remove_quietly, write_json
from .runtime.layout import is_job_id

DEFAULT_MAX_ATTEMPTS = 3


def _queue_ticket(root: Root, queue: str, job_id: str) -> str:
    return os.path.join(root.layout.queue_dir(queue), "{:020d}-{}".format(time.time_ns(), job_id))


def add_ticket(root: Root, queue: str, job_id: str) -> None:
    """Index a queued job in ``queue/<queue>/`` (tickets sort oldest first)."""
    root.write_ticket(_queue_ticket(root, queue, job_id), {})


def add_job(root: Root, job_id: str, spec: Dict[str, Any], waiting_on: List[str]) -> None:
    """Write a new job into the root: spec, then state, then its ticket."""
    root.makedirs(root.layout.job_dir(job_id))
    write_json(root.layout.job_file(job_id, "spec.json"), spec)
    status = PENDING if waiting_on else QUEUED
    # the ticket before the state: a submitter killed in between leaves an orphan ticket
    # (skipped, reported by fsck), never a queued job that no worker can find
    if waiting_on:
        root.write_ticket(root.layout.pending_ticket(job_id), {"queue": spec["queue"]})
    else:
        add_ticket(root, spec["queue"], job_id)
    root.write_state(job_id, {"status": status, "attempt": 0, "queue": spec["queue"],
                              "submitted": now_iso(), "worker": None})


def write_record(root: Root, job_id: str, name: str, record: Dict[str, Any]) -> None:
    """Write one of a job's JSON records (spec, result, error...) in its directory."""
    write_json(root.layout.job_file(job_id, name), record)


def _fail(root: Root, job_id: str, state: Dict[str, Any], error: Dict[str, Any],
          status: str = ERROR) -> None:
    """Record a final error (caller holds the lock)."""
    write_record(root, job_id, "error.json", error)
    state.update(status=status, finished=now_iso(), error="{}: {}".format(error["type"], error["message"]))
    root.write_state(job_id, state)


# -- pending -> queued -------------------------------------------------------

def _upstream_ids(spec: Dict[str, Any]) -> List[str]:
    return list(spec.get("upstream", []))


def promote_pending(root: Root) -> int:
    """Queue the pending jobs whose upstream jobs all finished; fail those whose
    upstream failed. Returns how many jobs changed. Any process may call this.

    A damaged record fails only the job it belongs to: one bad file never
    stops the promotion of the others.
    """
    changed = 0
    try:
        names = os.listdir(root.layout.pending)
    except FileNotFoundError:
        return 0
    for job_id in names:
        if not is_job_id(job_id):
            continue  # a temp file or a stray file: not a ticket (fsck reports it)
        try:
            changed += _promote_one(root, job_id)
        except filelock.Timeout:
            continue
        except (CorruptFileError, OSError, ValueError, KeyError) as exc:
            fail_damaged(root, job_id, "waiting for upstream jobs", exc)
            changed += 1
    return changed


def _pending_verdict(root: Root, job_id: str) -> Any:
    """None: ready to queue; "wait": not yet; a dict: the error to fail it with."""
    spec = root.read_spec(job_id)
    verdict = None
    for up in _upstream_ids(spec):
        if not is_job_id(up):
            # never a path: a hand-edited spec must not make anyone read outside the root
            return {"type": "ValueError", "module": "builtins", "stage": "waiting for upstream jobs",
                    "message": "{} names upstream job {!r}, which is not a hither_fs job id "
                               "(expected 16 hex digits)".format(root.layout.job_file(job_id, "spec.json"), up),
                    "traceback": ""}
        up_state = root.read_job_file(up, "state.json", {})
        status = up_state.get("status")
        if status in (ERROR, CANCELLED):
            up_fn = root.read_job_file(up, "spec.json", {}).get("function", {}).get("name", "?")
            return {"type": "UpstreamJobError", "module": "hither_fs", "stage": "waiting for upstream jobs",
                    "message": "upstream job {} ({}) {}: {}".format(
                        up, up_fn, "was cancelled" if status == CANCELLED else "failed", up_state.get("error", "")),
                    "traceback": "", "upstream": up}
        if status != FINISHED:
            verdict = "wait"
    return verdict


def _promote_one(root: Root, job_id: str) -> int:
    try:
        verdict = _pending_verdict(root, job_id)
    except FileNotFoundError:
        return 0  # being created, or gone
    if verdict == "wait":
        return 0
    with root.lock(job_id, timeout=0):
        state = root.read_state(job_id)
        changed = 0
        if state["status"] == PENDING:
            if verdict is None:
                # the index entry before the state: a crash in between leaves a ticket
                # that claimers drop as stale, never a queued job nobody can find
                add_ticket(root, state["queue"], job_id)
                state["status"] = QUEUED
                root.write_state(job_id, state)
            else:
                _fail(root, job_id, state, verdict)
            changed = 1
        remove_quietly(root.layout.pending_ticket(job_id))
        return changed


def fail_damaged(root: Root, job_id: str, stage: str, exc: Exception) -> None:
    """Fail a job whose own records cannot be read (naming the damage), and drop its tickets."""
    try:
        with root.lock(job_id, timeout=0):
            try:
                state = root.read_state(job_id)
            except (CorruptFileError, FileNotFoundError, ValueError):
                state = {}
            if state.get("status") in FINAL_STATUSES:
                return
            state.setdefault("queue", "?")
            _fail(root, job_id, state, {"type": type(exc).__name__, "module": type(exc).__module__,
                                        "stage": stage, "message": str(exc), "traceback": ""})
            remove_quietly(root.layout.pending_ticket(job_id))
            remove_quietly(root.layout.running_ticket(job_id))
    except (filelock.Timeout, OSError):
        pass


# -- queued -> running ---------------------------------------------------------

class Claim:
    """A job a worker has claimed: the attempt number fences its outcome."""

    def __init__(self, job_id: str, attempt: int, spec: Dict[str, Any]):
        self.job_id = job_id
        self.attempt = attempt
        self.spec = spec


def queue_tickets(root: Root, queue: str) -> List[str]:
    """The tickets of a queue, oldest first. Names that are not tickets (temp files, a
    stray file left by hand) are not work: they are skipped, and ``fsck`` reports them."""
    try:
        return sorted(n for n in os.listdir(root.layout.queue_dir(queue))
                      if not n.startswith(".") and is_job_id(n.rsplit("-", 1)[-1]))
    except FileNotFoundError:
        return []


def try_claim(root: Root, queue: str, ticket: str, worker_id: str,
              fits: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Optional[Claim]:
    """Claim the job behind one queue ticket, or return None if someone else has
    it (or ``fits(spec)`` says this worker cannot take it now)."""
    job_id = ticket.rsplit("-", 1)[-1]
    ticket_path = os.path.join(root.layout.queue_dir(queue), ticket)
    try:
        with root.lock(job_id, timeout=0):
            if not os.path.exists(ticket_path):
                return None
            try:
                state = root.read_state(job_id)
                spec = root.read_spec(job_id)
            except FileNotFoundError:
                return None  # being written by its submitter (the ticket comes first)
            except CorruptFileError as exc:
                # never run from a damaged record: the job fails, naming the file
                state = root.read_job_file(job_id, "state.json", {}) if "state.json" not in exc.path else {}
                state.setdefault("queue", queue)
                _fail(root, job_id, state, {"type": "CorruptFileError", "module": "hither_fs",
                                            "stage": "claiming", "message": str(exc), "traceback": ""})
                remove_quietly(ticket_path)
                return None
            if state["status"] != QUEUED:
                remove_quietly(ticket_path)  # stale index entry
                return None
            if fits is not None and not fits(spec):
                return None
            attempt = int(state.get("attempt", 0)) + 1
            state.update(status=RUNNING, attempt=attempt, worker=worker_id, started=now_iso())
            root.write_ticket(root.layout.running_ticket(job_id), {"worker": worker_id, "attempt": attempt})
            root.write_state(job_id, state)  # the commit of the claim
            remove_quietly(ticket_path)
            return Claim(job_id, attempt, spec)
    except filelock.Timeout:
        return None
    except FileNotFoundError:
        # the job directory vanished (deleted by hand): drop its ticket
        remove_quietly(ticket_path)
        return None


# -- running -> final ------------------------------------------------------------

def _move_if_exists(src: str, dst: str) -> bool:
    try:
        os.replace(src, dst)
        return True
    except FileNotFoundError:
        return False


def commit_attempt(root: Root, claim: Claim, worker_id: str, runtime: Dict[str, Any],
                   failure: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Publish an attempt's outputs and final status, if the claim still holds.

    ``failure`` describes an attempt that ended without writing its own
    outcome (killed, timed out, crashed). Returns the final status, or None if
    the claim was lost meanwhile (then the attempt's outputs are discarded).
    """
    job_id, attempt = claim.job_id, claim.attempt
    adir = root.layout.attempt_dir(job_id, attempt)
    with root.lock(job_id):
        state = root.read_state(job_id)
        if state.get("worker") != worker_id or state.get("attempt") != attempt or state["status"] != RUNNING:
            shutil.rmtree(adir, ignore_errors=True)
            return None
        jdir = root.layout.job_dir(job_id)
        for name in ("stdout.txt", "stderr.txt"):  # kept only when there was output
            src = os.path.join(adir, name)
            if os.path.exists(src) and os.path.getsize(src) > 0:
                os.replace(src, os.path.join(jdir, name))
        try:  # facts the attempt recorded about itself (a container job's image), under the worker's
            attempt_facts = read_json(os.path.join(adir, "runtime.json"), {}, missing_ok=True)
        except Exception:
            attempt_facts = {}
        attempt_facts = attempt_facts if isinstance(attempt_facts, dict) else {}
        write_json(os.path.join(jdir, "runtime.json"), dict(attempt_facts, **runtime))
        if failure is None and _move_if_exists(os.path.join(adir, "result.json"), os.path.join(jdir, "result.json")):
            status = FINISHED
            remove_quietly(os.path.join(jdir, "error.json"))
        else:
            if failure is None:
                try:
                    failure = read_json(os.path.join(adir, "error.json"))
                except FileNotFoundError:
                    failure = {"type": "JobProcessError", "module": "hither_fs", "stage": "running",
                               "message": "the job ended without writing a result", "traceback": ""}
            status = CANCELLED if failure.get("type") == "JobCancelledError" else ERROR
        shutil.rmtree(adir, ignore_errors=True)
        # the commit point: from here on the job is final
        if status == FINISHED:
            state.update(status=FINISHED, finished=now_iso(), error=None)
            root.write_state(job_id, state)
        else:
            _fail(root, job_id, state, failure, status)
        remove_quietly(root.layout.running_ticket(job_id))
        return status


# -- cancel ------------------------------------------------------------------------

def cancelled_record(job_id: str, why: str) -> Dict[str, Any]:
    return {"type": "JobCancelledError", "module": "hither_fs", "stage": "cancelled",
            "message": "job {} was cancelled {}".format(job_id, why), "traceback": ""}


def cancel(root: Root, job_id: str) -> str:
    """Cancel a job; a running job is killed by its worker. Returns the status after."""
    with root.lock(job_id):
        state = root.read_state(job_id)
        status = state["status"]
        if status in FINAL_STATUSES:
            return status
        if status == RUNNING:
            state["cancel_requested"] = now_iso()
            root.write_state(job_id, state)
            return RUNNING
        _fail(root, job_id, state, cancelled_record(job_id, "before it ran"), CANCELLED)
        remove_quietly(root.layout.pending_ticket(job_id))
        for ticket in queue_tickets(root, state["queue"]):
            if ticket.endswith("-" + job_id):
                remove_quietly(os.path.join(root.layout.queue_dir(state["queue"]), ticket))
        return CANCELLED


# -- lost workers ------------------------------------------------------------------

def requeue_lost(root: Root, job_id: str, worker_id: str, attempt: int, why: str,
                 count_attempt: bool = True) -> Optional[str]:
    """Hand a job back to the queue from a worker that is gone or leaving.

    A counted attempt brings the job closer to failing with ``WorkerLostError``
    (after ``max_attempts``); an uncounted one (a worker that saw its time
    limit coming and gave the job back in time) does not.
    """
    with root.lock(job_id):
        state = root.read_state(job_id)
        if state["status"] in FINAL_STATUSES:
            remove_quietly(root.layout.running_ticket(job_id))  # left by a worker that died after its commit
            return None
        if state["status"] != RUNNING or state.get("worker") != worker_id or state.get("attempt") != attempt:
            return None
        spec = root.read_spec(job_id)
        max_attempts = int(spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
        shutil.rmtree(root.layout.attempt_dir(job_id, attempt), ignore_errors=True)
        if state.get("cancel_requested"):
            _fail(root, job_id, state, cancelled_record(job_id, "while running (its worker was lost)"),
                  CANCELLED)
            remove_quietly(root.layout.running_ticket(job_id))
            return CANCELLED
        if not count_attempt:
            state["attempt"] = attempt - 1
            state["handed_back"] = int(state.get("handed_back", 0)) + 1
            if state["handed_back"] > max_attempts:
                _fail(root, job_id, state, {
                    "type": "WorkerLostError", "module": "hither_fs", "stage": "running",
                    "message": "handed back {} times because its workers' time ran out before it finished "
                               "(last: {}); give the allocations a longer time limit".format(
                                   state["handed_back"], why), "traceback": ""})
                remove_quietly(root.layout.running_ticket(job_id))
                return ERROR
        elif attempt >= max_attempts:
            _fail(root, job_id, state, {
                "type": "WorkerLostError", "module": "hither_fs", "stage": "running",
                "message": "worker lost {} times, giving up (last: {})".format(attempt, why),
                "traceback": ""})
            remove_quietly(root.layout.running_ticket(job_id))
            return ERROR
        # new index entry, state, old index entry - in that order: a crash at any point leaves
        # something that the next look repairs (a stale ticket, or a running ticket to re-check)
        add_ticket(root, state["queue"], job_id)
        state.update(status=QUEUED, worker=None, requeued=why)
        root.write_state(job_id, state)
        remove_quietly(root.layout.running_ticket(job_id))
        return QUEUED


def running_jobs(root: Root) -> Iterable[Tuple[str, Dict[str, Any]]]:
    try:
        names = os.listdir(root.layout.running)
    except FileNotFoundError:
        return
    for job_id in names:
        if not is_job_id(job_id):
            continue  # a temp file or a stray file: not a ticket (fsck reports it)
        try:
            ticket = read_json(os.path.join(root.layout.running, job_id), {}, missing_ok=True)
        except CorruptFileError:
            ticket = {}
        yield job_id, ticket

"""``hither-fs fsck``: check a whole root and report what is damaged.

Damage is reported, never repaired silently: a job record that does not
parse, a result that refers to a missing blob, a blob whose bytes no longer
match its sha1, an ``.npy`` that would need pickle. With ``--repair`` only
housekeeping is done: tickets that disagree with their job's state are
removed, and temporary files left by writers that died between write and
rename are swept.
"""

import contextlib
import os
import re
import socket
import time
from typing import Iterator, List, NamedTuple

import filelock
import numpy as np
import psutil

from . import queue
from .root import PENDING, QUEUED, RUNNING, Root
from .runtime.files import CorruptFileError, read_json, remove_quietly
from .runtime.layout import is_job_id
from .runtime.serialization import walk_refs
from .runtime.store import BlobMissingError, sha1_of_file

_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}$")
STALE_TEMP_SECONDS = 3600.0


class Finding(NamedTuple):
    path: str
    problem: str
    damage: bool        # data that cannot be trusted (not just housekeeping)
    repaired: bool = False


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _check_refs(root: Root, path: str, value) -> Iterator[Finding]:
    for ref in walk_refs(value):
        if "sha1" not in ref:
            continue
        ext = ".npy" if ref["__hither__"] != "file" else ""
        try:
            root.store.verified_path(ref["sha1"], ext)
        except (BlobMissingError, CorruptFileError) as exc:
            yield Finding(path, "refers to a bad blob: {}".format(exc), True)


def check_jobs(root: Root) -> Iterator[Finding]:
    for shard in _listdir(root.layout.jobs):
        for job_id in _listdir(os.path.join(root.layout.jobs, shard)):
            if job_id.startswith("."):
                continue
            jdir = os.path.join(root.layout.jobs, shard, job_id)
            records = {}
            for name in ("spec.json", "state.json", "result.json", "error.json", "runtime.json"):
                path = os.path.join(jdir, name)
                try:
                    records[name] = read_json(path, None, missing_ok=True)
                except CorruptFileError as exc:
                    yield Finding(path, exc.problem, True)
            state = records.get("state.json") or {}
            if not os.path.exists(os.path.join(jdir, "spec.json")):
                yield Finding(jdir, "job directory without spec.json", True)
            if state.get("status") == "finished":
                result = records.get("result.json")
                if result is None and not os.path.exists(os.path.join(jdir, "result.json")):
                    yield Finding(jdir, "state is finished but result.json is missing", True)
                elif result is not None:
                    yield from _check_refs(root, os.path.join(jdir, "result.json"), result.get("value"))


def check_store(root: Root) -> Iterator[Finding]:
    for shard in _listdir(root.layout.store):
        for name in _listdir(os.path.join(root.layout.store, shard)):
            if name.startswith("."):
                continue
            path = os.path.join(root.layout.store, shard, name)
            sha1 = name[:-4] if name.endswith(".npy") else name
            actual = sha1_of_file(path)
            if actual != sha1:
                yield Finding(path, "content hash is {}, expected {}".format(actual, sha1), True)
                continue
            if name.endswith(".npy"):
                try:
                    np.load(path, allow_pickle=False, mmap_mode="r")
                except ValueError as exc:
                    yield Finding(path, "not a loadable array without pickle: {}".format(exc), True)


def check_cache(root: Root) -> Iterator[Finding]:
    for shard in _listdir(root.layout.cache):
        for name in _listdir(os.path.join(root.layout.cache, shard)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(root.layout.cache, shard, name)
            try:
                entry = read_json(path)
            except CorruptFileError as exc:
                yield Finding(path, exc.problem, True)
                continue
            if "value" in entry:
                yield from _check_refs(root, path, entry["value"])


STALE_TICKET_SECONDS = 60.0


def _status_under_lock(root: Root, job_id: str):
    """A job's status read under its lock (so no claim is half-done), or None if busy or unreadable."""
    try:
        with root.lock(job_id, timeout=0):
            return (root.read_job_file(job_id, "state.json", {}) or {}).get("status", "no state")
    except (filelock.Timeout, CorruptFileError, OSError):
        return None


def check_tickets(root: Root, repair: bool) -> Iterator[Finding]:
    """Tickets that disagree with their job's state, and live jobs that lost their ticket.

    Young tickets are left alone: a submitter writes a job's ticket just before its state.
    """
    now = time.time()
    indexed = {QUEUED: set(), PENDING: set(), RUNNING: set()}

    def stale(path: str, job_id: str, wanted: str) -> Iterator[Finding]:
        if not is_job_id(job_id):  # workers skip it; it is not hither_fs's
            yield Finding(path, "not a ticket: its name holds no job id", False, repair and remove_quietly(path))
            return
        indexed[wanted].add(job_id)
        try:
            if now - os.stat(path).st_mtime < STALE_TICKET_SECONDS:
                return
        except FileNotFoundError:
            return
        status = _status_under_lock(root, job_id)
        if status is not None and status != wanted:
            yield Finding(path, "ticket for a job that is {}, not {}".format(status, wanted), False,
                          repair and remove_quietly(path))
    for q in _listdir(root.layout.queues):
        for ticket in _listdir(os.path.join(root.layout.queues, q)):
            if not ticket.startswith("."):
                yield from stale(os.path.join(root.layout.queues, q, ticket), ticket.rsplit("-", 1)[-1], QUEUED)
    for directory, wanted in ((root.layout.pending, PENDING), (root.layout.running, RUNNING)):
        for job_id in _listdir(directory):
            if not job_id.startswith("."):
                yield from stale(os.path.join(directory, job_id), job_id, wanted)
    # the other way round: a live job that no index points to would never be run
    for shard in _listdir(root.layout.jobs):
        for job_id in _listdir(os.path.join(root.layout.jobs, shard)):
            if not is_job_id(job_id):
                continue
            try:
                state = root.read_job_file(job_id, "state.json", {}) or {}
            except CorruptFileError:
                continue
            status = state.get("status")
            if status not in indexed or job_id in indexed[status]:
                continue
            with contextlib.suppress(filelock.Timeout, OSError, CorruptFileError), root.lock(job_id, timeout=0):
                state = root.read_state(job_id)
                if state.get("status") != status:
                    continue
                repaired = False
                if repair:
                    if status == QUEUED:
                        queue.add_ticket(root, state["queue"], job_id)
                    elif status == PENDING:
                        root.write_ticket(root.layout.pending_ticket(job_id), {"queue": state["queue"]})
                    else:
                        root.write_ticket(root.layout.running_ticket(job_id),
                                          {"worker": state.get("worker"), "attempt": state.get("attempt")})
                    repaired = True
                yield Finding(root.layout.job_dir(job_id), "{} job without a ticket: no worker would see it".format(
                    status), False, repaired)


def check_temp_files(root: Root, repair: bool) -> Iterator[Finding]:
    """Temp files whose writer is gone: dead pid on this host, or old elsewhere."""
    host, now = socket.gethostname(), time.time()
    for dirpath, _, files in os.walk(root.path):
        for name in files:
            m = _TEMP_RE.match(name)
            if not m:
                continue
            path = os.path.join(dirpath, name)
            if m.group("host") == host:
                dead = not psutil.pid_exists(int(m.group("pid")))
            else:
                try:
                    dead = now - os.stat(path).st_mtime > STALE_TEMP_SECONDS
                except FileNotFoundError:
                    continue
            if dead:
                yield Finding(path, "temporary file of a writer that died", False, repair and remove_quietly(path))


def fsck(root: Root, repair: bool = False) -> List[Finding]:
    findings: List[Finding] = []
    for check in (check_jobs(root), check_store(root), check_cache(root),
                  check_tickets(root, repair), check_temp_files(root, repair)):
        findings.extend(check)
    return findings

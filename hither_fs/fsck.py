"""``hither-fs fsck``: check a whole root and report what is damaged or left over.

Damage is reported, never repaired silently: a record that does not parse, a
result that refers to a missing blob, a blob whose bytes no longer match its
sha1, an ``.npy`` that would need pickle, two tokens for one job. With
``--repair`` only what a crash can leave behind is put right, and only when
it is old enough that no live process can still be in the middle of it
(:data:`STALE_SECONDS` by the file's age, or a writer on this host whose pid
is dead):

- a live job with no token (its submitter died between publishing the job
  and queueing it) gets one;
- a job whose token was taken by a process that died before publishing the
  next state (a window of two system calls) goes back to its queue;
- tokens of jobs that are final or gone, stray files in the queues,
  temporary files and unpublished job directories of dead writers, waiter
  markers nobody needs and heartbeat directories of long-dead idle workers
  are removed.
"""

import os
import re
import shutil
import socket
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Set

import numpy as np
import psutil

from . import protocol
from .lease import id_host_pid
from .protocol import FINAL_VALUES, Status, Token
from .queue import is_bucket, is_ticket, queue_names, ticket_token
from .root import Root
from .runtime.files import CorruptFileError, listdir, read_json, remove_quietly
from .runtime.layout import host_label, is_job_id, is_worker_id, live_console_prefix
from .runtime.serialization import walk_refs
from .runtime.store import BlobMissingError, sha1_of_file

_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.tmp-(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}$")
STALE_SECONDS = 60.0
STALE_TEMP_SECONDS = 3600.0


class Finding(NamedTuple):
    path: str
    problem: str
    damage: bool        # data that cannot be trusted (not just housekeeping)
    repaired: bool = False


def _age(path: str) -> float:
    try:
        return time.time() - os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _writer_dead(name: str, path: str, min_age: float = STALE_TEMP_SECONDS) -> bool:
    """Whether the process that made the temporary file ``name`` is gone: a dead pid on
    this host, or (another host's, whose pids mean nothing here) older than ``min_age``."""
    m = _TEMP_RE.match(name)
    if not m:
        return False
    if m.group("host") == socket.gethostname():
        return not psutil.pid_exists(int(m.group("pid")))
    return _age(path) > min_age


def _check_refs(root: Root, path: str, value) -> Iterator[Finding]:
    for ref in walk_refs(value):
        if "sha1" not in ref:
            continue
        ext = ".npy" if ref["__hither__"] != "file" else ""
        try:
            root.store.verified_path(ref["sha1"], ext)
        except (BlobMissingError, CorruptFileError, ValueError) as exc:
            yield Finding(path, "refers to a bad blob: {}".format(exc), True)


def _job_dirs(root: Root) -> Iterator[str]:
    for shard in sorted(listdir(root.layout.jobs)):
        shard_dir = os.path.join(root.layout.jobs, shard)
        for name in sorted(listdir(shard_dir)):
            yield os.path.join(shard_dir, name)


def check_jobs(root: Root, tokens: Dict[str, protocol.Found], taken: Set[str], repair: bool) -> Iterator[Finding]:
    """Every job's records, and whether each live job has the token that keeps it moving."""
    for jdir in _job_dirs(root):
        name = os.path.basename(jdir)
        if not is_job_id(name):
            if name.startswith(".") and _writer_dead(name, jdir):
                yield Finding(jdir, "unpublished job directory of a submitter that died", False,
                              repair and _rmtree(jdir))
            continue
        yield from _check_job(root, name, jdir, tokens, taken, repair)


def _console_of(name: str, state: Dict) -> Optional[str]:
    """``stdout.txt``/``stderr.txt`` if ``name`` is the live console file of the run that
    counted (its state records output for it)."""
    for stream in ("stdout", "stderr"):
        prefix = live_console_prefix(stream, state.get("gen", 0), state.get("attempt", 1))
        if name.startswith(prefix) and (state.get("console") or {}).get(stream):
            return stream + ".txt"
    return None


def _rename(src: str, dst: str) -> bool:
    os.rename(src, dst)
    return True


def _rmtree(path: str) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return True


def _check_job(root: Root, job_id: str, jdir: str, tokens: Dict[str, protocol.Found], taken: Set[str],
               repair: bool) -> Iterator[Finding]:
    records = {}
    for name in ("spec.json", "state.json"):
        path = os.path.join(jdir, name)
        try:
            records[name] = read_json(path)
        except FileNotFoundError:
            yield Finding(jdir, "job directory without {}".format(name), True)
        except CorruptFileError as exc:
            yield Finding(path, exc.problem, True)
    state = records.get("state.json")
    status = state.get("status") if isinstance(state, dict) else None
    live = job_id in tokens or job_id in taken  # a running job's live console files are its own
    for name in listdir(jdir):
        path = os.path.join(jdir, name)
        if _TEMP_RE.match(name) and not live and _writer_dead(name, path):
            console = _console_of(name, state) if status in FINAL_VALUES else None
            if console and not os.path.lexists(os.path.join(jdir, console)):
                # the run that counted, killed between its state and renaming its output
                yield Finding(path, "console output not yet under its name {}".format(console), False,
                              repair and _rename(path, os.path.join(jdir, console)))
            else:
                yield Finding(path, "temporary file of a writer that died", False, repair and remove_quietly(path))
    if not isinstance(state, dict):
        return
    if status == Status.FINISHED:
        result = state.get("result")
        if not isinstance(result, dict) or "value" not in result:
            yield Finding(os.path.join(jdir, "state.json"), "state is finished but holds no result", True)
        else:
            yield from _check_refs(root, os.path.join(jdir, "state.json"), result["value"])
    if status in FINAL_VALUES:
        ddir = os.path.join(jdir, "downstream")
        for down in listdir(ddir):
            if is_job_id(down) and not os.path.lexists(os.path.join(root.layout.pending, Token(down).name)):
                yield Finding(os.path.join(ddir, down), "marker of a job that waits no more", False,
                              repair and remove_quietly(os.path.join(ddir, down)))
        return
    if _age(os.path.join(jdir, "state.json")) < STALE_SECONDS:
        return
    if job_id in tokens:
        if status == Status.PENDING and tokens[job_id].status == Status.PENDING and \
                protocol._upstream_verdict(root, job_id, records.get("spec.json") or {}) != "wait":
            # its upstream jobs have ended, and nobody moved it on (the finisher was killed)
            yield Finding(jdir, "pending job whose upstream jobs have ended", False,
                          repair and protocol.promote(root, job_id) is not None)
        return
    if job_id in taken:
        return  # its taker is judged by check_taken
    # a live job without a token: nobody would ever move it
    repaired = False
    if repair and job_id not in protocol.find_tokens(root, {job_id}):  # look again, right before acting
        protocol.add_missing_token(root, job_id, state)
        repaired = True
    yield Finding(jdir, "{} job without a token: no worker would see it".format(status), False, repaired)


def check_tokens(root: Root, repair: bool) -> Iterator[Finding]:
    """Files in queue/, pending/ and running/ that are not tokens, and tokens of jobs that
    are final or gone."""
    def stray(path: str) -> Iterator[Finding]:
        name = os.path.basename(path)
        if name.startswith("."):
            if _writer_dead(name, path):
                yield Finding(path, "temporary file of a writer that died", False, repair and remove_quietly(path))
            return
        yield Finding(path, "not a ticket: its name holds no job token", False, repair and remove_quietly(path))

    def check(path: str, token: Optional[Token], wanted: Status) -> Iterator[Finding]:
        if token is None:
            yield from stray(path)
            return
        if _age(path) < STALE_SECONDS:
            return
        try:
            state = protocol.read_state(root, token.job_id)
        except FileNotFoundError:
            yield Finding(path, "token of job {}, which is not in the root".format(token.job_id), False,
                          repair and remove_quietly(path))
            return
        except CorruptFileError:
            return  # reported with the job
        if state.get("status") in FINAL_VALUES:
            yield Finding(path, "token of a job that is {}".format(state["status"]), False,
                          repair and remove_quietly(path))

    for q in queue_names(root.layout):
        qdir = root.layout.queue_dir(q)
        for bucket in listdir(qdir):
            bdir = os.path.join(qdir, bucket)
            if bucket == "bell":
                continue
            if not os.path.isdir(bdir):
                yield from stray(bdir)
                continue
            if not is_bucket(bucket):
                yield Finding(bdir, "a directory that is not a bucket (left alone)", False)
                continue
            for name in listdir(bdir):
                path = os.path.join(bdir, name)
                yield from check(path, Token.parse(ticket_token(name)) if is_ticket(name) else None, Status.QUEUED)
    for name in listdir(root.layout.pending):
        yield from check(os.path.join(root.layout.pending, name), Token.parse(name), Status.PENDING)
    for name in listdir(root.layout.running):
        token = Token.parse(name)
        yield from check(os.path.join(root.layout.running, name),
                         token if token is not None and token.worker else None, Status.RUNNING)


def _taker_dead(root: Root, taker_id: str, path: str) -> bool:
    """Whether the process that took a token is gone: a dead pid on this host, or no
    heartbeat younger than STALE_TEMP_SECONDS elsewhere (taker ids are
    ``<kind>-<host>-<pid>-<tag>``)."""
    host, pid = id_host_pid(taker_id)
    if host == host_label() and pid is not None:
        return not psutil.pid_exists(pid)
    hb = root.layout.heartbeat(taker_id)
    return (_age(hb) if os.path.lexists(hb) else _age(path)) > STALE_TEMP_SECONDS


def check_taken(root: Root, repair: bool) -> Iterator[Finding]:
    """Tokens a process took and never replaced by a state (it died in between): lease
    recovery moves them on by itself once the taker is judged lost; fsck does so for a
    root no worker looks at."""
    for taker_id, token, path in protocol.taken_tokens(root):
        if _age(path) < STALE_SECONDS or not _taker_dead(root, taker_id, path):
            continue
        repaired = repair and protocol.recover_taken(
            root, path, "its token was left with {}, which is gone (moved on by hither-fs fsck --repair)"
            .format(taker_id)) is not None
        yield Finding(path, "token of job {} taken by {}, which died before it wrote the job's next state".format(
            token.job_id, taker_id), False, repaired)


def check_duplicates(tokens_by_job: Dict[str, List[str]]) -> Iterator[Finding]:
    for job_id, paths in sorted(tokens_by_job.items()):
        if len(paths) > 1:
            yield Finding(paths[0], "job {} has {} tokens ({}): it could run twice".format(
                job_id, len(paths), ", ".join(paths)), True)


def _all_tokens(root: Root) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for q in queue_names(root.layout):
        qdir = root.layout.queue_dir(q)
        for bucket in filter(is_bucket, listdir(qdir)):
            for name in filter(is_ticket, listdir(os.path.join(qdir, bucket))):
                token = Token.parse(ticket_token(name))
                if token:
                    out.setdefault(token.job_id, []).append(os.path.join(qdir, bucket, name))
    for directory in (root.layout.pending, root.layout.running):
        for name in listdir(directory):
            token = Token.parse(name)
            if token:
                out.setdefault(token.job_id, []).append(os.path.join(directory, name))
    return out


def check_store(root: Root) -> Iterator[Finding]:
    for shard in sorted(listdir(root.layout.store)):
        for name in sorted(listdir(os.path.join(root.layout.store, shard))):
            path = os.path.join(root.layout.store, shard, name)
            if name.startswith("."):
                continue
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
    for shard in sorted(listdir(root.layout.cache)):
        for name in sorted(listdir(os.path.join(root.layout.cache, shard))):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(root.layout.cache, shard, name)
            try:
                entry = read_json(path)
            except CorruptFileError as exc:
                yield Finding(path, exc.problem, True)
                continue
            if isinstance(entry, dict) and "value" in entry:
                yield from _check_refs(root, path, entry["value"])


def check_workers(root: Root, repair: bool) -> Iterator[Finding]:
    """Heartbeat directories of workers that stopped beating long ago and hold no claims."""
    claimed = {t.worker for t, _ in protocol.running_claims(root)}
    for worker_id in listdir(root.layout.workers):
        if not is_worker_id(worker_id) or worker_id in claimed:
            continue
        hb = root.layout.heartbeat(worker_id)
        if not os.path.lexists(hb) or _age(hb) > STALE_TEMP_SECONDS:
            yield Finding(root.layout.worker_dir(worker_id), "worker that stopped beating long ago", False,
                          repair and _rmtree(root.layout.worker_dir(worker_id)))


def check_temp_files(root: Root, repair: bool) -> Iterator[Finding]:
    """Temp files elsewhere in the root (store, cache, workers, logs) whose writer is gone."""
    skip = {root.layout.jobs, root.layout.queues, root.layout.pending, root.layout.running}
    for dirpath, dirnames, files in os.walk(root.path):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in files:
            path = os.path.join(dirpath, name)
            if _writer_dead(name, path):
                yield Finding(path, "temporary file of a writer that died", False, repair and remove_quietly(path))


def fsck(root: Root, repair: bool = False) -> List[Finding]:
    all_tokens = _all_tokens(root)
    tokens = protocol.find_tokens(root)
    taken = {token.job_id for _, token, _ in protocol.taken_tokens(root)}
    findings: List[Finding] = []
    for check in (check_duplicates(all_tokens), check_taken(root, repair), check_jobs(root, tokens, taken, repair),
                  check_tokens(root, repair),
                  check_store(root), check_cache(root), check_workers(root, repair),
                  check_temp_files(root, repair)):
        findings.extend(check)
    return findings

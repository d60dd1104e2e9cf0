"""``hither-fs fsck``: check a whole root and report what is damaged or left over.

Damage is reported, never repaired by guessing: a record that does not
parse or is not a regular file, a job directory that is not a directory, a
job or cache entry that refers to a missing or damaged blob, a blob whose
bytes no longer match its sha1, an ``.npy`` that would need pickle, records
that disagree (a spec naming another job, an unknown status, a finished job
without a result), two tokens for one job. With ``--repair`` what a crash
can leave behind is put right, and only once no live process can still be
in the middle of it:

- a live job with no token (its submitter died between publishing the job
  and queueing it) gets one;
- a job whose token was taken by a process that died before publishing the
  next state goes back to its queue;
- a pending job whose upstream jobs ended (or are gone) is queued or failed;
- tokens of jobs that are final or gone, stray files in the queues,
  temporary files and unpublished job directories of dead writers, waiter
  markers and in-flight markers nobody needs, heartbeat directories of
  long-dead idle workers are removed;
- a cache entry whose blobs are missing or damaged is removed (it would only
  ever be a miss; the next run of the job records it again).

Whether a writer is gone is judged by its host and pid where it ran on this
host, and otherwise by the age of its file on the file system's own clock
(:func:`~hither_fs.runtime.files.fs_now`): never by comparing this node's
clock with another's. A FIFO, device or symbolic link where a regular file
belongs is reported, never opened or followed, so fsck finishes on any root.
"""

import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Set

import numpy as np
import psutil

from . import listing, protocol, summary
from .lease import id_host_pid
from .protocol import FINAL_VALUES, Status, Token
from .queue import is_bucket, is_ticket, queue_names, ticket_token
from .root import Root
from .runtime.files import DAMAGE_ERRORS, CorruptFileError, fs_now, listdir, open_regular, read_json, remove_quietly
from .runtime.layout import host_label, is_job_id, is_worker_id, live_console_prefix
from .runtime.serialization import blob_refs
from .runtime.store import BlobMissingError, sha1_of_file

_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.tmp-(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}$")
_MARKER_RE = re.compile(r"^(?P<key>[0-9a-f]{40})\.inflight\.(?P<n>\d+)$")
#: Seconds a token or record may look inconsistent before fsck calls it left over.
STALE_SECONDS = 60.0
#: Seconds after which another host's temporary file or silent heartbeat counts as dead.
STALE_TEMP_SECONDS = 3600.0
_STATUS_VALUES = frozenset(s.value for s in Status)


class Finding(NamedTuple):
    path: str
    problem: str
    damage: bool        # data that cannot be trusted (not just housekeeping)
    repaired: bool = False


@dataclass
class Check:
    """One fsck run: the root, whether to repair, and "now" by the file system's clock."""

    root: Root
    repair: bool
    now: float

    def age(self, path: str) -> float:
        try:
            return self.now - os.lstat(path).st_mtime
        except FileNotFoundError:
            return 0.0

    def writer_dead(self, name: str, path: str) -> bool:
        """Whether the process that made the temporary file ``name`` is gone: a dead pid on
        this host, or (another host's, whose pids mean nothing here) an old file."""
        m = _TEMP_RE.match(name)
        if not m:
            return False
        if m.group("host") == socket.gethostname():
            return not psutil.pid_exists(int(m.group("pid")))
        return self.age(path) > STALE_TEMP_SECONDS

    def taker_dead(self, taker_id: str, path: str) -> bool:
        """Whether the process that took a token is gone: a dead pid on this host, or no
        heartbeat for STALE_TEMP_SECONDS (taker ids are ``<kind>-<host>-<pid>-<tag>``)."""
        host, pid = id_host_pid(taker_id)
        if host == host_label() and pid is not None:
            return not psutil.pid_exists(pid)
        hb = self.root.layout.heartbeat(taker_id)
        return (self.age(hb) if os.path.lexists(hb) else self.age(path)) > STALE_TEMP_SECONDS


def guarded(path: str, check: Callable[[], Iterator[Finding]]) -> Iterator[Finding]:
    """The findings of one entry's check; if the entry is too damaged to check, that."""
    try:
        yield from check()
    except DAMAGE_ERRORS as exc:
        yield Finding(path, "cannot be checked: {}".format(exc), True)


def _kind(path: str) -> Optional[str]:
    """What a name in the root is, by its ``lstat``: 'dir', 'file', 'link', 'other' or None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "link" if stat.S_ISLNK(mode) else "other")


def _rename(src: str, dst: str) -> bool:
    os.rename(src, dst)
    return True


def _rmtree(path: str) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return True


def _blob_problem(root: Root, sha1: Any, ext: str) -> Optional[str]:
    try:
        root.store.verified_path(sha1, ext)
    except (BlobMissingError, CorruptFileError, ValueError, OSError) as exc:
        return str(exc)
    return None


def _check_blobs(root: Root, path: str, what: str, value: Any) -> Iterator[Finding]:
    for sha1, ext in blob_refs(value):
        problem = _blob_problem(root, sha1, ext)
        if problem:
            yield Finding(path, "{} refers to a bad blob: {}".format(what, problem), True)


# -- jobs ----------------------------------------------------------------------------------

def check_jobs(c: Check, tokens: Dict[str, protocol.Found], taken: Set[str]) -> Iterator[Finding]:
    """Every job's records, and whether each live job has the token that keeps it moving."""
    jobs = c.root.layout.jobs
    for shard in sorted(listdir(jobs)):
        shard_dir = os.path.join(jobs, shard)
        if _kind(shard_dir) != "dir":
            if not _TEMP_RE.match(shard):  # (temporary files: check_temp_files)
                yield Finding(shard_dir, "not a shard directory of jobs/ (left alone)", True)
            continue
        for name in sorted(listdir(shard_dir)):
            jdir = os.path.join(shard_dir, name)
            kind = _kind(jdir)
            if not is_job_id(name):
                if name.startswith(".") and kind == "dir" and c.writer_dead(name, jdir):
                    yield Finding(jdir, "unpublished job directory of a writer that died", False,
                                  c.repair and _rmtree(jdir))
                elif name.startswith(".") and kind == "file" and c.writer_dead(name, jdir):  # a label's (set_label)
                    yield Finding(jdir, "temporary file of a writer that died", False,
                                  c.repair and remove_quietly(jdir))
                continue
            if kind != "dir":
                yield Finding(jdir, "is {}, not a job directory (left alone: nothing can be recorded "
                              "for job {})".format("a symbolic link" if kind == "link" else "not a directory",
                                                   name), True)
                continue
            yield from guarded(jdir, lambda: _check_job(c, name, jdir, tokens, taken))


def _console_of(name: str, state: Dict) -> Optional[str]:
    """``stdout.txt``/``stderr.txt`` if ``name`` is the live console file of the run that
    counted (its state records output for it)."""
    for stream in ("stdout", "stderr"):
        prefix = live_console_prefix(stream, state.get("gen", 0), state.get("attempt", 1))
        if name.startswith(prefix) and (state.get("console") or {}).get(stream):
            return stream + ".txt"
    return None


def _read_records(jdir: str) -> Iterator[Any]:
    """Yield a finding for each record that cannot be read; return ``{name: record}``
    of the others (``records = yield from _read_records(jdir)``)."""
    records: Dict[str, Any] = {}
    for name in ("spec.json", "state.json"):
        path = os.path.join(jdir, name)
        try:
            records[name] = read_json(path)
        except FileNotFoundError:
            yield Finding(jdir, "job directory without {}".format(name), True)
        except CorruptFileError as exc:
            yield Finding(path, exc.problem, True)
    return records


def _records_disagree(job_id: str, spec: Any, state: Any) -> Optional[str]:
    if isinstance(spec, dict) and spec.get("id") not in (None, job_id):
        return "spec.json is the spec of job {!r}, not of job {}".format(spec.get("id"), job_id)
    if not isinstance(state, dict):
        return None
    status = state.get("status")
    if status not in _STATUS_VALUES:
        return "state.json has status {!r}, which is none of {}".format(status, ", ".join(sorted(_STATUS_VALUES)))
    if status == Status.FINISHED and not (isinstance(state.get("result"), dict) and "value" in state["result"]):
        return "state is finished but holds no result"
    return None


def _check_job(c: Check, job_id: str, jdir: str, tokens: Dict[str, protocol.Found],
               taken: Set[str]) -> Iterator[Finding]:
    root = c.root
    records = yield from _read_records(jdir)
    spec, state = records.get("spec.json"), records.get("state.json")
    status = state.get("status") if isinstance(state, dict) else None
    live = job_id in tokens or job_id in taken  # a running job's live console files are its own
    for name in listdir(jdir):
        path = os.path.join(jdir, name)
        if _TEMP_RE.match(name) and not live and c.writer_dead(name, path):
            console = _console_of(name, state) if status in FINAL_VALUES else None
            if console and not os.path.lexists(os.path.join(jdir, console)):
                # the run that counted, killed between its state and renaming its output
                yield Finding(path, "console output not yet under its name {}".format(console), False,
                              c.repair and _rename(path, os.path.join(jdir, console)))
            else:
                yield Finding(path, "temporary file of a writer that died", False,
                              c.repair and remove_quietly(path))
    disagree = _records_disagree(job_id, spec, state)
    if disagree:
        yield Finding(jdir, disagree, True)
    if isinstance(spec, dict):
        spec_path = os.path.join(jdir, "spec.json")
        yield from _check_blobs(root, spec_path, "an argument", spec.get("args"))
        manifest = (spec.get("code") or {}).get("manifest") if isinstance(spec.get("code"), dict) else None
        if manifest is not None:
            problem = _blob_problem(root, manifest, "")
            if problem:
                yield Finding(spec_path, "its code environment refers to a bad blob: {}".format(problem), True)
        source = (spec.get("function") or {}).get("source") if isinstance(spec.get("function"), dict) else None
        if isinstance(source, str) and status not in FINAL_VALUES:  # a live job still needs it
            problem = _blob_problem(root, source, "")
            if problem:
                yield Finding(spec_path, "the source of its function refers to a bad blob: {}".format(problem), True)
    if not isinstance(state, dict) or disagree:
        return
    state_path = os.path.join(jdir, "state.json")
    if status == Status.FINISHED:
        yield from _check_blobs(root, state_path, "its result", state["result"]["value"])
    if status in FINAL_VALUES:
        ddir = os.path.join(jdir, "downstream")
        for down in listdir(ddir):
            if is_job_id(down) and not os.path.lexists(os.path.join(root.layout.pending, Token(down).name)) \
                    and not _live(root, down):  # a live job may still read this one's result: gc keeps it
                yield Finding(os.path.join(ddir, down), "marker of a job that waits no more", False,
                              c.repair and remove_quietly(os.path.join(ddir, down)))
        return
    if c.age(state_path) < STALE_SECONDS:
        return
    if job_id in tokens:
        if status == Status.PENDING and tokens[job_id].status == Status.PENDING and \
                protocol._upstream_verdict(root, job_id, spec or {}) != "wait":
            # its upstream jobs have ended (or are gone), and nobody moved it on (the finisher was killed)
            yield Finding(jdir, "pending job whose upstream jobs have ended", False,
                          c.repair and protocol.promote(root, job_id) is not None)
        return
    if job_id in taken:
        return  # its taker is judged by check_taken
    # a live job without a token: nobody would ever move it - unless it moved while fsck listed
    if _moved_meanwhile(root, job_id, state):
        return
    if c.repair:
        protocol.add_missing_token(root, job_id, state)
    yield Finding(jdir, "{} job without a token: no worker would see it".format(status), False, c.repair)


def _moved_meanwhile(root: Root, job_id: str, state: Dict[str, Any]) -> bool:
    """Whether a live job fsck found no token of has one after all, looked at again: fsck's
    listings can miss a token that moved between two of them (a ticket claimed after
    ``running/`` was listed and before its queue was), and a commit takes it out of sight."""
    if protocol.has_token(root, job_id):
        return True
    try:  # after the listing: a token that left running/ meanwhile left a final state
        return protocol.read_state(root, job_id) != state
    except (OSError, CorruptFileError):
        return True


def _live(root: Root, job_id: str) -> bool:
    """Whether a job exists and has not ended (damaged: counted live, nothing is removed for it)."""
    try:
        return protocol.read_state(root, job_id).get("status") not in FINAL_VALUES
    except FileNotFoundError:
        return False
    except (OSError, CorruptFileError, AttributeError):
        return True


# -- tokens ------------------------------------------------------------------------------

def check_tokens(c: Check) -> Iterator[Finding]:
    """Files in queue/, pending/ and running/ that are not tokens, and tokens of jobs that
    are final or gone."""
    root = c.root

    def stray(path: str) -> Iterator[Finding]:
        name = os.path.basename(path)
        if name.startswith("."):
            if c.writer_dead(name, path):
                yield Finding(path, "temporary file of a writer that died", False, c.repair and remove_quietly(path))
            return
        yield Finding(path, "not a ticket: its name holds no job token", False,
                      c.repair and _kind(path) != "dir" and remove_quietly(path))

    def check(path: str, token: Optional[Token]) -> Iterator[Finding]:
        if token is None:
            yield from stray(path)
            return
        if c.age(path) < STALE_SECONDS:
            return
        try:
            state = protocol.read_state(root, token.job_id)
        except FileNotFoundError:
            yield Finding(path, "token of job {}, which is not in the root".format(token.job_id), False,
                          c.repair and remove_quietly(path))
            return
        except (CorruptFileError, OSError):
            return  # reported with the job
        if state.get("status") in FINAL_VALUES:
            yield Finding(path, "token of a job that is {}".format(state["status"]), False,
                          c.repair and remove_quietly(path))

    for q in queue_names(root.layout):
        qdir = root.layout.queue_dir(q)
        for bucket in listdir(qdir):
            bdir = os.path.join(qdir, bucket)
            if bucket in ("bell", "scheduler.json"):
                continue
            if _kind(bdir) != "dir":
                yield from stray(bdir)
                continue
            if not is_bucket(bucket):
                yield Finding(bdir, "a directory that is not a bucket (left alone)", False)
                continue
            for name in listdir(bdir):
                path = os.path.join(bdir, name)
                yield from guarded(path, lambda: check(path, Token.parse(ticket_token(name))
                                                       if is_ticket(name) else None))
    for name in listdir(root.layout.pending):
        path = os.path.join(root.layout.pending, name)
        yield from guarded(path, lambda: check(path, Token.parse(name)))
    for name in listdir(root.layout.running):
        if protocol.parse_taken(name):
            continue  # check_taken
        token = Token.parse(name)
        path = os.path.join(root.layout.running, name)
        yield from guarded(path, lambda: check(path, token if token is not None and token.worker else None))


def check_taken(c: Check) -> Iterator[Finding]:
    """Tokens a process took and never replaced by a state (it died in between): lease
    recovery moves them on by itself once the taker is judged lost; fsck does so for a
    root no worker looks at."""
    for taker_id, token, path in protocol.taken_tokens(c.root):
        if c.age(path) < STALE_SECONDS or not c.taker_dead(taker_id, path):
            continue
        repaired = c.repair and protocol.recover_taken(
            c.root, path, "its token was left with {}, which is gone (moved on by hither-fs fsck --repair)"
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


# -- store and cache -------------------------------------------------------------------------

def _check_blob_file(c: Check, path: str, name: str) -> Iterator[Finding]:
    kind = _kind(path)
    if kind != "file":
        yield Finding(path, "is {} where a blob belongs".format(
            "a symbolic link" if kind == "link" else "not a regular file"), True,
            c.repair and kind != "dir" and remove_quietly(path))
        return
    sha1 = name[:-4] if name.endswith(".npy") else name
    actual = sha1_of_file(path, regular_only=True)
    if actual != sha1:
        yield Finding(path, "content hash is {}, expected {}".format(actual, sha1), True)
        return
    if name.endswith(".npy"):  # the header says all: an array that would need pickle (never loaded whole)
        with os.fdopen(open_regular(path), "rb") as f:
            try:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                dtype = read_header(f)[2]
                if dtype.hasobject:
                    raise ValueError("its dtype {} holds Python objects, which only pickle could load".format(dtype))
            except ValueError as exc:
                yield Finding(path, "not a loadable array without pickle: {}".format(exc), True)


def check_store(c: Check, store_dir: str) -> Iterator[Finding]:
    for shard in sorted(listdir(store_dir)):
        shard_dir = os.path.join(store_dir, shard)
        if shard.startswith(".") or _kind(shard_dir) != "dir":
            continue  # temporary files: check_temp_files
        for name in sorted(listdir(shard_dir)):
            if not name.startswith("."):
                path = os.path.join(shard_dir, name)
                yield from guarded(path, lambda: _check_blob_file(c, path, name))


def _check_cache_entry(c: Check, path: str, key: str) -> Iterator[Finding]:
    try:
        entry = read_json(path)
    except CorruptFileError as exc:
        yield Finding(path, exc.problem, True, c.repair and remove_quietly(path))
        return
    if not isinstance(entry, dict) or entry.get("key") != key:
        yield Finding(path, "not the cache entry of key {}".format(key), True, c.repair and remove_quietly(path))
        return
    if "value" in entry:
        problems = [p for sha1, ext in blob_refs(entry["value"]) for p in [_blob_problem(c.root, sha1, ext)] if p]
        if problems:
            yield Finding(path, "cache entry whose result refers to a bad blob: {}".format(problems[0]), True,
                          c.repair and remove_quietly(path))


def _dead_marker(c: Check, path: str) -> bool:
    """Whether an in-flight marker names a job of this root that is final or gone."""
    try:
        marker = read_json(path)
    except CorruptFileError:
        return True
    job_id = marker.get("job_id") if isinstance(marker, dict) and marker.get("root") == c.root.path else None
    if not is_job_id(job_id):
        return False  # another root's job: not ours to judge
    try:
        return protocol.read_state(c.root, job_id).get("status") in FINAL_VALUES
    except FileNotFoundError:
        return True


def check_cache(c: Check) -> Iterator[Finding]:
    """The root's cache: entries that do not parse or point at missing blobs, and
    in-flight markers of jobs that ended (all of a key's, or none, are removed)."""
    cache_dir = c.root.layout.cache
    for shard in sorted(listdir(cache_dir)):
        shard_dir = os.path.join(cache_dir, shard)
        if shard.startswith(".") or _kind(shard_dir) != "dir":
            continue
        markers: Dict[str, List[str]] = {}
        for name in sorted(listdir(shard_dir)):
            path = os.path.join(shard_dir, name)
            m = _MARKER_RE.match(name)
            if m:
                markers.setdefault(m.group("key"), []).append(path)
            elif name.endswith(".json") and not name.startswith("."):
                yield from guarded(path, lambda: _check_cache_entry(c, path, name[:-5]))
        for key, paths in markers.items():
            yield from guarded(paths[-1], lambda: _check_markers(c, key, paths))


def _check_markers(c: Check, key: str, paths: List[str]) -> Iterator[Finding]:
    if any(c.age(p) < STALE_SECONDS for p in paths) or not all(_dead_marker(c, p) for p in paths):
        return
    repaired = False
    if c.repair:  # newest first, as JobCache.release_in_flight does
        for p in sorted(paths, key=lambda p: int(p.rpartition(".")[2]), reverse=True):
            remove_quietly(p)
        repaired = True
    yield Finding(paths[-1], "{} in-flight marker(s) of key {} whose jobs have all ended".format(len(paths), key),
                  False, repaired)


# -- listing summaries --------------------------------------------------------------------------

_SUMMARY_RE = re.compile(r"^[0-9a-f]{2}\.jsonl$")


def check_summaries(c: Check) -> Iterator[Finding]:
    """``summary/``: a cache of the ended jobs for ``hither-fs ls`` (never damage: ls builds a
    summary again when it cannot use it). Reported, and removed by ``--repair``: a summary
    that cannot be used, and one that ``ls`` would trust (its stamp is its shard's mtime)
    whose rows differ from the records (a final job's records changed by hand)."""
    root = c.root
    for name in sorted(listdir(root.layout.summaries)):
        path = os.path.join(root.layout.summaries, name)
        if not _SUMMARY_RE.match(name) or _kind(path) != "file":
            continue  # (temporary files: check_temp_files)
        yield from guarded(path, lambda: _check_summary(c, path, name[:2]))


def _check_summary(c: Check, path: str, shard: str) -> Iterator[Finding]:
    found = summary.load(c.root, shard)
    if found is None:
        if os.path.lexists(path):
            yield Finding(path, "listing summary that cannot be used (damaged, or of another format; hither-fs ls "
                          "builds it again)", False, c.repair and remove_quietly(path))
        return
    if found.stamp is None or found.stamp != summary.shard_mtime(c.root, shard):
        return  # out of date, as ls sees too: brought up to date by the next ls
    for line in found.lines():
        row = found.row(line)
        if listing.job_row(c.root, row["id"], {}) != row:
            yield Finding(path, "listing summary out of date: job {}'s records changed after it ended (by "
                          "hand?); hither-fs ls would show it as it was".format(row["id"]), False,
                          c.repair and remove_quietly(path))
            return


# -- workers and temporary files ---------------------------------------------------------------

def check_workers(c: Check) -> Iterator[Finding]:
    """Heartbeat directories of workers that stopped beating long ago and hold no claims."""
    claimed = {t.worker for t, _ in protocol.running_claims(c.root)}
    for worker_id in listdir(c.root.layout.workers):
        if not is_worker_id(worker_id) or worker_id in claimed:
            continue
        hb = c.root.layout.heartbeat(worker_id)
        if not os.path.lexists(hb) or c.age(hb) > STALE_TEMP_SECONDS:
            wdir = c.root.layout.worker_dir(worker_id)
            yield Finding(wdir, "worker that stopped beating long ago", False, c.repair and _rmtree(wdir))


def check_temp_files(c: Check) -> Iterator[Finding]:
    """Temp files elsewhere in the root (store, cache, workers, logs) whose writer is gone."""
    layout = c.root.layout
    skip = {layout.jobs, layout.queues, layout.pending, layout.running}
    stack = [c.root.path]  # (an explicit stack: however deep a tree someone made, no recursion limit)
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.path not in skip:
                    stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and c.writer_dead(entry.name, entry.path):
                yield Finding(entry.path, "temporary file of a writer that died", False,
                              c.repair and remove_quietly(entry.path))


def fsck(root: Root, repair: bool = False) -> List[Finding]:
    c = Check(root, repair, fs_now(root.layout.running))
    all_tokens = _all_tokens(root)
    tokens = protocol.find_tokens(root)
    taken = {token.job_id for _, token, _ in protocol.taken_tokens(root)}
    findings: List[Finding] = []
    for check in (check_duplicates(all_tokens), check_taken(c), check_jobs(c, tokens, taken), check_tokens(c),
                  check_store(c, root.layout.store), check_cache(c), check_summaries(c), check_workers(c),
                  check_temp_files(c)):
        findings.extend(check)
    return findings


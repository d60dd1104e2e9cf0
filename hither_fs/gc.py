"""``hither-fs gc``: remove old jobs, and then the blobs that nothing needs any more.

What may go: final jobs (finished, error, cancelled) that the selection names
- older than ``--older-than``, of a function, run, label or status, or the
oldest first until the root fits ``--max-bytes`` / ``--max-inodes``. What
always stays:

- live jobs (pending, queued, running) and any job whose records cannot be
  read (``hither-fs fsck`` reports those; gc never guesses);
- the final jobs a live job waits for (its upstream jobs);
- everything younger than the grace period (:data:`GRACE_SECONDS`), by the
  file system's clock (:func:`~hither_fs.runtime.files.fs_now`), never this
  node's;
- cache entries, unless ``--cache`` (then the root's entries that match the
  function and age go too) - and every blob a kept entry refers to.

Blobs go by mark and sweep: after the jobs are chosen, every blob a kept job
or cache entry refers to is marked (arguments, results, code environments and
the files they list), and every other blob older than the grace period is
removed. That is safe while submitters run: storing a blob always writes it
anew, so a blob a submission has just stored - and not yet recorded its job
for - is young; and a blob is first renamed aside and looked at again, and
put back if it was stored again in between.

A job disappears whole: its directory is renamed to a hidden name, then
removed. A job submitted later naming a removed job as its upstream fails
with "upstream job ... is not in the root".
"""

import contextlib
import math
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from . import protocol, summary
from .codeenv import REUSE_SECONDS, read_manifest
from .listing import label_of
from .protocol import FINAL_VALUES
from .root import Root
from .runtime.files import (DAMAGE_ERRORS, fs_now, listdir, read_json, remove_quietly, rename_dir_unless_there, temp_name,
                            write_bytes)
from .runtime.store import Store
from .usage import Count, Walk, blob_keys, source_key

#: Nothing younger than this is removed (a job's end, a blob's last store), by default.
GRACE_SECONDS = 3600.0
#: The shortest grace period: a submitting process reuses a code environment it stored
#: for this long without storing it again.
MIN_GRACE_SECONDS = REUSE_SECONDS
_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12, "p": 10 ** 15}
_SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: Any) -> int:
    """``10G``, ``500M``, ``2.5T``, ``1000`` (bytes; powers of 1000, a trailing B allowed) as an int."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    t = str(text).strip().lower().rstrip("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" else ""
    try:
        return int(_finite(float(t[:-1] if unit else t)) * _UNITS[unit])
    except ValueError:
        raise ValueError("not a size: {!r} (for example 500M, 10G, 2T)".format(text)) from None


def parse_age(text: Any) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600`` (seconds) as seconds; also a ``timedelta``."""
    if hasattr(text, "total_seconds"):
        return text.total_seconds()
    t = str(text).strip().lower()
    unit = t[-1:] if t[-1:] in _SPANS else "s"
    try:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return _finite(float(text))
        return _finite(float(t[:-1] if t[-1:] in _SPANS else t)) * _SPANS[unit]
    except ValueError:
        raise ValueError("not an age: {!r} (for example 30d, 12h, 90m, 2w)".format(text)) from None


def _finite(value: float) -> float:
    """``value``, or a ValueError for nan and inf (nan passes every "at least" check unnoticed)."""
    if not math.isfinite(value):
        raise ValueError(value)
    return value


@dataclass
class Selection:
    """Which final jobs ``gc`` removes. Criteria combine (all must hold); with a budget,
    the matching jobs go oldest first only until the root fits it."""

    older_than: Optional[float] = None     # seconds since the job ended
    functions: Optional[Set[str]] = None
    runs: Optional[Set[str]] = None
    labels: Optional[Set[str]] = None
    statuses: Optional[Set[str]] = None    # among finished, error, cancelled
    max_bytes: Optional[int] = None        # of the whole root, on disk (what a quota charges)
    max_inodes: Optional[int] = None
    cache: bool = False                    # also the root's cache entries (by function and age)
    grace: float = GRACE_SECONDS

    def __post_init__(self):
        if self.older_than is None and self.max_bytes is None and self.max_inodes is None and not (
                self.functions or self.runs or self.labels or self.statuses):
            raise ValueError("say what to remove: an age (--older-than), a budget (--max-bytes, --max-inodes) "
                             "or jobs by --function, --run, --label or --status")
        bad = set(self.statuses or ()) - FINAL_VALUES
        if bad:
            raise ValueError("only final jobs can be removed, not {} ones".format(", ".join(sorted(bad))))
        for name in ("older_than", "max_bytes", "max_inodes", "grace"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 <= value < math.inf):
                raise ValueError("{} must be a finite number, not negative: not {!r}".format(name, value))
        if self.grace < MIN_GRACE_SECONDS:
            raise ValueError("the grace period must be at least {:.0f} minutes (a submitting process reuses the "
                             "code environment it stored for that long), not {:g} s".format(
                                 MIN_GRACE_SECONDS / 60, self.grace))
        if self.cache and (self.runs or self.labels or self.statuses or self.max_bytes is not None
                           or self.max_inodes is not None):
            raise ValueError("--cache removes cache entries by --function and --older-than only (entries have "
                             "no run, label or status, and are never removed to fit a budget)")


@dataclass
class _Job:
    status: Any
    function: Any
    run: Any
    label: Any
    age: float
    count: Count
    blobs: Set[str]
    upstream: List[str]


@dataclass
class Plan:
    """What a gc removes (``--dry-run`` prints it) and what it frees."""

    jobs: List[str] = field(default_factory=list)
    cache_entries: List[str] = field(default_factory=list)
    blobs: List[str] = field(default_factory=list)      # "ab/<name>" in the store
    freed: Count = field(default_factory=Count)
    total: Count = field(default_factory=Count)         # the root before
    kept: Dict[str, int] = field(default_factory=dict)  # why final jobs that matched stay
    notes: List[str] = field(default_factory=list)      # what this gc could not do, and why
    now: float = 0.0
    counts: Dict[str, Count] = field(default_factory=dict, repr=False)  # of each job, entry and blob planned

    def keep(self, why: str) -> None:
        self.kept[why] = self.kept.get(why, 0) + 1


class _Manifests:
    """The blobs a code environment consists of (its manifest and the files it lists)."""

    def __init__(self, store: Store):
        self.store = store
        self._seen: Dict[str, Set[str]] = {}

    def blobs(self, code: Any) -> Set[str]:
        sha1 = code.get("manifest") if isinstance(code, dict) else None
        if not isinstance(sha1, str):
            return set()
        if sha1 not in self._seen:
            keys = {"{}/{}".format(sha1[:2], sha1)}
            try:
                keys.update("{}/{}".format(b[:2], b) for b in read_manifest(self.store, sha1).values())
            except Exception:  # missing or damaged: fsck's business; its files stay unmarked
                pass
            self._seen[sha1] = keys
        return self._seen[sha1]


def _read_job(root: Root, job_id: str, count: Count, age: float, manifests: _Manifests,
              labels: bool = False) -> Optional[_Job]:
    """What gc needs to know of a job; None if its spec cannot be read. A state that
    cannot be read makes it live (a worker holding it writes a good one, and runs it).
    ``labels``: also read a label set after submission (``label.json``)."""
    try:
        spec = protocol.read_spec(root, job_id)
        label = label_of(root, job_id, spec) if labels else spec.get("label")
        job = _Job(None, (spec.get("function") or {}).get("name"), spec.get("run"), label, age, count,
                   blob_keys(spec.get("args")) | source_key(spec) | manifests.blobs(spec.get("code")),
                   [u for u in spec.get("upstream") or [] if isinstance(u, str)])
    except DAMAGE_ERRORS:
        return None
    try:
        state = protocol.read_state(root, job_id)
        job.status = state.get("status")
        if job.status == "finished":
            job.blobs |= blob_keys(state["result"]["value"])
    except DAMAGE_ERRORS:
        job.status = None
    return job


def _matches(sel: Selection, job: _Job) -> bool:
    return ((sel.older_than is None or job.age >= sel.older_than)
            and (not sel.functions or job.function in sel.functions)
            and (not sel.runs or job.run in sel.runs)
            and (not sel.labels or job.label in sel.labels)
            and (not sel.statuses or job.status in sel.statuses))


def plan(root: Root, sel: Selection) -> Plan:
    """Decide what a gc of ``root`` removes, without removing anything."""
    out = Plan(now=fs_now(root.layout.running))
    walk = Walk(root.path)
    out.total = walk.total
    manifests = _Manifests(root.store)
    jobs: Dict[str, _Job] = {}
    unreadable = 0
    for job_id, count in walk.jobs.items():
        job = _read_job(root, job_id, count, out.now - walk.mtimes.get(job_id, out.now), manifests,
                        bool(sel.labels)) \
            if job_id in walk.job_dirs else None
        if job is not None:  # (a job without a readable spec, or not a directory, stays: fsck reports it)
            jobs[job_id] = job
        elif job_id in walk.job_dirs:
            unreadable += 1
    if unreadable:  # its blobs are unknown: its result, or its arguments once the spec is mended
        out.notes.append("no blob is removed while {} job(s) have a spec that cannot be read "
                         "(hither-fs fsck lists them)".format(unreadable))
    live = {j for j, job in jobs.items() if job.status not in FINAL_VALUES or j in walk.claimed}
    needed = {up for j in live for up in jobs[j].upstream}
    candidates = []
    for job_id, job in jobs.items():
        if job_id in live or not _matches(sel, job):
            continue
        if job_id in needed:
            out.keep("upstream of a live job")
        elif job.age < sel.grace:
            out.keep("in the grace period")
        else:
            candidates.append(job_id)
    candidates.sort(key=lambda j: -jobs[j].age)  # oldest first

    marks: Dict[str, int] = {}
    for job in jobs.values():
        for key in job.blobs:
            marks[key] = marks.get(key, 0) + 1
    for key, count in walk.cache_entries.items():
        if ".inflight." in key:
            continue
        try:
            entry = read_json(os.path.join(root.layout.cache, key))
            blobs = blob_keys(entry.get("value")) if isinstance(entry, dict) else set()
            age = out.now - walk.file_mtimes["cache/" + key]
            drop = sel.cache and age >= max(sel.grace, sel.older_than or 0) and (
                not sel.functions or entry.get("function") in sel.functions)
        except DAMAGE_ERRORS:
            continue  # fsck's business
        if drop:
            out.cache_entries.append(key)
            out.counts["cache/" + key] = count
            out.freed.add(count)
        else:
            for b in blobs:
                marks[b] = marks.get(b, 0) + 1

    def free_blob(key: str) -> None:
        out.blobs.append(key)
        # a blob with another name (a code environment, another cache's store) frees only an entry
        count = Count() if "store/" + key in walk.linked else walk.blobs[key]
        out.counts["store/" + key] = count
        out.freed.add(count)

    def sweepable(key: str) -> bool:
        return (not unreadable and marks.get(key, 0) == 0 and key in walk.blobs
                and out.now - walk.file_mtimes["store/" + key] >= sel.grace)

    for key in walk.blobs:  # blobs nothing refers to already (withdrawn submissions, old gcs...)
        if sweepable(key):
            free_blob(key)
    budget = sel.max_bytes is not None or sel.max_inodes is not None

    def fits() -> bool:
        return ((sel.max_bytes is None or out.total.disk - out.freed.disk <= sel.max_bytes)
                and (sel.max_inodes is None or out.total.inodes - out.freed.inodes <= sel.max_inodes))

    for job_id in candidates:
        if budget and fits():
            break
        job = jobs[job_id]
        out.jobs.append(job_id)
        out.counts["jobs/" + job_id] = job.count
        out.freed.add(job.count)
        for key in job.blobs:
            marks[key] -= 1
            if sweepable(key):
                free_blob(key)
    if budget and not fits():
        out.notes.append("the budget cannot be met by removing final jobs")
    return out


def remove_job(root: Root, job_id: str, young_after: float = float("inf")) -> bool:
    """Remove a final job's directory whole: renamed aside, then deleted. It stays (or is
    put back) if a live job waits for it (a marker in its ``downstream/``), or if it was
    handed out again (a cache hit) after ``young_after``, by the file system's clock."""
    job_dir = root.layout.job_dir(job_id)
    if _waited_for(root, job_dir) or _used_since(job_dir, young_after):
        return False  # (looked at before the rename too: a job set aside looks removed for a moment)
    aside = temp_name(job_dir)
    try:
        os.rename(job_dir, aside)
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        os.utime(aside)  # young: another node's fsck must not judge it a dead writer's
    if _used_since(aside, young_after) or _waited_for(root, aside):
        # put back - unless the job was put in again meanwhile (a lab cache's hit keeps a job
        # it finds missing, with the same outcome): then that one stays
        rename_dir_unless_there(aside, job_dir)
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _used_since(job_dir: str, young_after: float) -> bool:
    """Whether the job was handed out again (its state.json touched) after ``young_after``."""
    try:
        return os.lstat(os.path.join(job_dir, "state.json")).st_mtime >= young_after
    except FileNotFoundError:
        return False


def _waited_for(root: Root, job_dir: str) -> bool:
    """Whether a live job waits for this one (and so may still read its result)."""
    for job_id in listdir(os.path.join(job_dir, "downstream")):
        try:
            if protocol.read_state(root, job_id).get("status") not in FINAL_VALUES:
                return True
        except FileNotFoundError:
            continue
        except DAMAGE_ERRORS:
            return True  # cannot tell: keep what it may need
    return False


def sweep_blob(path: str, stored_before: float) -> bool:
    """Remove a blob judged unreferenced, unless it was stored again after ``stored_before``
    (file-system time): it is renamed aside first, looked at, and put back if it is new
    (or if it is not a regular file at all, which is fsck's to report)."""
    aside = temp_name(path)
    try:
        os.rename(path, aside)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    try:
        st = os.lstat(aside)
        if st.st_mtime >= stored_before or not stat.S_ISREG(st.st_mode):
            try:
                os.link(aside, path) if stat.S_ISREG(st.st_mode) else os.rename(aside, path)
            except FileExistsError:
                pass  # stored yet again meanwhile: that copy is as good
            return False
        return True
    finally:
        remove_quietly(aside)


def collect(root: Root, sel: Selection, dry_run: bool = False) -> Plan:
    """Plan a gc of ``root`` and, unless ``dry_run``, carry it out. Returns what was (or
    would be) removed, and what that freed, counted from what was really removed."""
    p = plan(root, sel)
    if dry_run:
        return p
    cutoff = p.now - sel.grace
    removed = [j for j in p.jobs if remove_job(root, j, young_after=cutoff)]
    if len(removed) < len(p.jobs):  # put back: their blobs stay marked until the next gc looks again
        p.keep("put back (waited for, or handed out again, while gc ran)")
        p.blobs = []
    p.jobs = removed
    for key in p.cache_entries:
        remove_quietly(os.path.join(root.layout.cache, key))
    p.blobs = [key for key in p.blobs if sweep_blob(os.path.join(root.layout.store, key), cutoff)]
    p.freed = Count()
    for name in ["jobs/" + j for j in p.jobs] + ["cache/" + k for k in p.cache_entries] + ["store/" + k for k in p.blobs]:
        p.freed.add(p.counts[name])
    # shard directories left empty (a writer that needs one again makes it again)
    shards = {os.path.join(root.layout.jobs, j[:2]) for j in removed} | \
        {os.path.join(top, key[:2]) for top, keys in ((root.layout.store, p.blobs), (root.layout.cache, p.cache_entries))
         for key in keys}
    for shard in shards:
        try:
            st = os.lstat(shard)
            os.rmdir(shard)
        except OSError:
            continue  # not empty (or gone)
        p.freed.add(Count(st.st_size, st.st_blocks * 512, 1))
    summary.refresh(root, {j[:2] for j in removed})  # (ls would see they went anyway: this saves it the work)
    return p


def _scan(directory: str) -> List[Tuple[str, os.stat_result]]:
    """``("ab/<name>", lstat)`` of the regular files in the shards of ``directory``."""
    out = []
    for shard in listdir(directory):
        if len(shard) != 2:
            continue
        for name in listdir(os.path.join(directory, shard)):
            try:
                st = os.lstat(os.path.join(directory, shard, name))
            except FileNotFoundError:
                continue
            if not name.startswith(".") and stat.S_ISREG(st.st_mode):
                out.append((shard + "/" + name, st))
    return out


def reduce_cache(directory: str, store: Optional[Store], bytes_limit: Optional[int] = None, items_limit: Optional[int] = None,
                 age_limit: Optional[float] = None, grace: float = GRACE_SECONDS) -> Tuple[List[str], List[str]]:
    """Remove entries of the job cache in ``directory`` (oldest first) until it holds at
    most ``items_limit`` entries and ``bytes_limit`` bytes (entries and blobs) and none
    older than ``age_limit`` seconds; then sweep the blobs of its ``store`` that no entry
    left refers to. Entries younger than ``grace`` stay whatever the limits. Returns the
    entries and blobs removed."""
    now = fs_now(directory)
    entries = sorted(((k, st) for k, st in _scan(directory) if k.endswith(".json")), key=lambda e: e[1].st_mtime)
    blobs = _scan(store.path) if store is not None else []
    refs: Dict[str, Set[str]] = {}
    marks: Dict[str, int] = {}
    for key, _ in entries:
        try:
            entry = read_json(os.path.join(directory, key))
            refs[key] = blob_keys(entry.get("value")) if isinstance(entry, dict) else set()
        except DAMAGE_ERRORS:
            refs[key] = set()
        for b in refs[key]:
            marks[b] = marks.get(b, 0) + 1
    size = {k: st.st_size for k, st in blobs}
    cutoff = now - grace
    # blobs no entry refers to are swept anyway (once old enough): they do not count against the limit
    total = sum(st.st_size for _, st in entries) + sum(
        st.st_size for k, st in blobs if marks.get(k, 0) or st.st_mtime >= cutoff)
    left = len(entries)
    removed: List[str] = []
    for key, st in entries:
        age = now - st.st_mtime
        if age < grace or not ((age_limit is not None and age > age_limit) or
                               (items_limit is not None and left > items_limit) or
                               (bytes_limit is not None and total > bytes_limit)):
            continue
        remove_quietly(os.path.join(directory, key))
        removed.append(key)
        left -= 1
        total -= st.st_size
        for b in refs[key]:
            marks[b] -= 1
            total -= size.get(b, 0) if marks[b] == 0 else 0
    swept = [k for k, st in blobs if marks.get(k, 0) == 0 and st.st_mtime < cutoff
             and sweep_blob(os.path.join(store.path, k), cutoff)] if store is not None else []
    return removed, swept


# -- retention by default ------------------------------------------------------------

#: Worker logs older than this many days are removed by workers (``HITHER_FS_KEEP_LOGS_DAYS``;
#: ``0`` or ``off``: never).
KEEP_LOGS_DAYS = 30.0
#: Heartbeat directories of workers silent this long (and holding no job) are removed.
KEEP_DEAD_WORKERS_DAYS = 7.0
_RETENTION_STAMP = ".retention"
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def keep_logs_days() -> Optional[float]:
    value = os.environ.get("HITHER_FS_KEEP_LOGS_DAYS", "").strip().lower()
    if value in ("0", "off", "never", "no"):
        return None
    try:
        return float(value) if value else KEEP_LOGS_DAYS
    except ValueError:
        raise ValueError("HITHER_FS_KEEP_LOGS_DAYS must be a number of days or 'off', not {!r}".format(value)) \
            from None


def apply_retention(root: Root, force: bool = False) -> List[str]:
    """The root's default retention, applied by each worker as it starts - at most once a
    day per root (a stamp file says when, by the file system's clock): worker logs older
    than :func:`keep_logs_days`, and the heartbeat directories of workers silent for
    :data:`KEEP_DEAD_WORKERS_DAYS` that hold no job. Never a job, a result or a cache
    entry. Returns what it removed."""
    days = keep_logs_days()
    stamp = os.path.join(root.layout.logs, _RETENTION_STAMP)
    now = fs_now(root.layout.logs)
    try:
        if not force and now - os.lstat(stamp).st_mtime < 86400:
            return []
    except FileNotFoundError:
        pass
    write_bytes(stamp, b"")
    removed: List[str] = []
    if days is not None:  # logs/<file>, logs/<day>/<file>, logs/slurm/<file>: two levels, no deeper
        for directory in [root.layout.logs] + [os.path.join(root.layout.logs, d) for d in listdir(root.layout.logs)]:
            if directory != root.layout.logs and not os.path.isdir(directory):
                continue
            emptied = False
            for name in listdir(directory):
                path = os.path.join(directory, name)
                if name != _RETENTION_STAMP and os.path.isfile(path) and _older(path, now, days) and \
                        remove_quietly(path):
                    removed.append(path)
                    emptied = True
            # a day's directory it emptied, or an old empty one (logs/slurm/ stays: sbatch writes into it)
            if _DAY_RE.match(os.path.basename(directory)) and not listdir(directory) and \
                    (emptied or _older(directory, now, days)):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
                    removed.append(directory)
    claimed = {t.worker for t, _ in protocol.running_claims(root)}
    for worker_id in listdir(root.layout.workers):
        wdir = os.path.join(root.layout.workers, worker_id)
        hb = os.path.join(wdir, "heartbeat.json")
        if worker_id not in claimed and _older(hb if os.path.lexists(hb) else wdir, now, KEEP_DEAD_WORKERS_DAYS):
            shutil.rmtree(wdir, ignore_errors=True)
            removed.append(wdir)
    return removed


def _older(path: str, now: float, days: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime > days * 86400
    except FileNotFoundError:
        return False

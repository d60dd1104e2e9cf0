"""What ``hither-fs ls``, ``cancel`` and ``report`` know about each job, and how they pick jobs.

A job's *row* holds what ``ls`` shows of it (:data:`FIELDS`), read from its
``spec.json`` and ``state.json`` (and its label, if one was set after it was
submitted); a queued job that a worker has claimed is shown running (the
claims in ``running/`` say so). Rows are ordered by submission, then id.

A :class:`Listing` answers ``ls``'s questions - counts per status, the newest
rows, one line per run, label or function - from *parts*: rows read just now
(:class:`Rows`), and the summaries of the ended jobs that
:mod:`hither_fs.summary` keeps per shard, which it reads instead of every
ended job's records. Each part knows the totals of its rows per (run, label,
function, status), so counting needs no row; rows are merged newest first and
read only as far as they are shown. Jobs are picked by run (a unique prefix
of its id), label, function, status and age, and named by unique prefixes of
their ids.
"""

import datetime
import heapq
import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from . import protocol
from .protocol import Status
from .root import Root
from .runtime.files import CorruptFileError, listdir
from .runtime.layout import is_job_id

JOB_ID_LENGTH = 16
#: The statuses of jobs that can still be cancelled.
LIVE = (Status.PENDING.value, Status.QUEUED.value, Status.RUNNING.value)
#: A row's fields, in the order ``ls --json`` shows them.
FIELDS = ("id", "status", "function", "run", "label", "submitted", "attempt", "worker", "host", "start", "end",
          "seconds", "queue", "error")
#: The order of statuses in counts (others after them, by name).
STATUS_ORDER = ("finished", "error", "cancelled", "running", "queued", "pending")
#: How the protocol writes times (:func:`hither_fs.root.now_iso`): such strings sort as their times do.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

Row = Dict[str, Any]
#: What rows are counted by: (run, label, function, status).
Key = Tuple[str, str, str, str]


def parse_time(text: Any) -> Optional[float]:
    """Seconds since the epoch of a record's UTC time (``2026-11-30T04:44:36.127778Z``), or None."""
    if not isinstance(text, str) or not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            pass
    return None


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as the protocol writes times, rounded up to the microsecond."""
    micros = -int(-seconds * 1e6 // 1)
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shards(root: Root) -> List[str]:
    """The shard directories of ``jobs/`` (``00`` .. ``ff``) that exist, in order."""
    return sorted(s for s in listdir(root.layout.jobs) if len(s) == 2 and all(c in "0123456789abcdef" for c in s))


def shard_job_ids(root: Root, shard: str) -> List[str]:
    return [j for j in listdir(os.path.join(root.layout.jobs, shard)) if is_job_id(j) and j.startswith(shard)]


def job_ids(root: Root) -> Iterator[str]:
    for shard in shards(root):
        yield from shard_job_ids(root, shard)


def label_of(root: Root, job_id: str, spec: Dict[str, Any]) -> str:
    """The label set with ``job.set_label()`` (``label.json`` in the job's directory), else the
    one ``hi.Config(label=...)`` gave it at submission."""
    try:
        label = protocol.read_label(root, job_id)
    except (OSError, CorruptFileError):  # a damaged one: the submission's label (fsck reports it)
        label = None
    if label is not None:
        return label
    label = spec.get("label") or ""
    return label if isinstance(label, str) else repr(label)


def _damaged(job_id: str, why: str) -> Row:
    return {"id": job_id, "status": "damaged", "function": "?", "run": "", "label": "", "submitted": "",
            "attempt": 0, "worker": "", "host": "", "start": None, "end": None, "seconds": None,
            "queue": "", "error": why}


def job_row(root: Root, job_id: str, running: Dict[str, Any]) -> Optional[Row]:
    """One job's facts (None if it is gone; ``status: damaged`` if its records cannot be read).
    ``running``: the claims in ``running/`` by job id."""
    try:
        protocol.check_job_dir(root, job_id)
        state = protocol.read_state(root, job_id)
        spec = protocol.read_spec(root, job_id)
    except FileNotFoundError:
        return None
    except (OSError, CorruptFileError) as exc:
        return _damaged(job_id, str(exc))
    function, label, status = spec.get("function"), label_of(root, job_id, spec), state.get("status", "?")
    runtime = state.get("runtime") or {}
    if not (isinstance(function, dict) and isinstance(status, str) and isinstance(label, str)
            and isinstance(runtime, dict)):
        return _damaged(job_id, "its spec or state has fields of the wrong type (hither-fs fsck)")
    worker = runtime.get("worker") or state.get("worker") or ""
    attempt = state.get("attempt", 0)
    if status == Status.QUEUED and job_id in running:
        status, worker, attempt = Status.RUNNING.value, running[job_id].worker, running[job_id].attempt
    start, end = parse_time(runtime.get("start")), parse_time(runtime.get("end"))
    return {"id": job_id, "status": status, "function": str(function.get("name", "?")),
            "run": str(spec.get("run") or ""), "label": label,
            "submitted": str(state.get("submitted") or spec.get("created") or ""), "attempt": attempt,
            "worker": str(worker), "host": str(runtime.get("host") or ""), "start": start, "end": end,
            "seconds": None if start is None or end is None else round(end - start, 3),
            "queue": str(state.get("queue") or spec.get("queue") or ""), "error": str(protocol.summary(state))}


def read_rows(root: Root, ids: Iterable[str], running: Dict[str, Any]) -> List[Row]:
    return [r for r in (job_row(root, j, running) for j in ids) if r]


def order(row: Row) -> Tuple[str, str]:
    """Where a row is listed: by submission, then by id."""
    return row["submitted"], row["id"]


def key_of(row: Row) -> Key:
    return row["run"], row["label"], row["function"], row["status"]


class Totals:
    """What ``ls`` counts of some rows (those of one key, in one part): how many, the first
    submitted ``(submitted, id)``, how many ran (had a start and an end) and for how many
    milliseconds in all, the earliest start and the latest end."""

    __slots__ = ("n", "first", "timed", "ms", "start", "end")

    def __init__(self, n: int = 0, first: Optional[Tuple[str, str]] = None, timed: int = 0, ms: int = 0,
                 start: Optional[float] = None, end: Optional[float] = None):
        self.n, self.first, self.timed, self.ms, self.start, self.end = n, first, timed, ms, start, end

    def add(self, row: Row) -> None:
        seconds, start, end, first = row.get("seconds"), row.get("start"), row.get("end"), order(row)
        self.n += 1
        if seconds is not None:
            self.timed += 1
            self.ms += round(seconds * 1000)
        if self.first is None or first < self.first:
            self.first = first
        if start is not None and (self.start is None or start < self.start):
            self.start = start
        if end is not None and (self.end is None or end > self.end):
            self.end = end

    def merge(self, other: "Totals") -> None:
        self.n += other.n
        self.timed += other.timed
        self.ms += other.ms
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.start is not None and (self.start is None or other.start < self.start):
            self.start = other.start
        if other.end is not None and (self.end is None or other.end > self.end):
            self.end = other.end

    def copy(self) -> "Totals":
        return Totals(self.n, self.first, self.timed, self.ms, self.start, self.end)


def totals_of(rows: Iterable[Row]) -> Dict[Key, Totals]:
    out: Dict[Key, Totals] = {}
    for r in rows:
        key = key_of(r)
        if key not in out:
            out[key] = Totals()
        out[key].add(r)
    return out


class Part:
    """Some of a root's rows: their totals per key, and the rows themselves newest first."""

    totals: Dict[Key, Totals]

    def newest(self, keys: Optional[Set[Key]], since: Optional[Tuple[str, float]]) -> Iterator[Tuple[Tuple[str, str], Row]]:
        """``(order(row), row)`` of the rows whose key is in ``keys`` (None: all) and that were
        submitted at or after ``since`` (``(iso time, seconds)``), newest first."""
        raise NotImplementedError


def newer(submitted: str, since: Tuple[str, float]) -> bool:
    """Whether a row submitted at ``submitted`` counts for ``--since``: by the string where it
    is the protocol's (strings sort as times), else by its parsed time (none: never)."""
    if ISO_TIME.match(submitted):
        return submitted >= since[0]
    return (parse_time(submitted) or 0) >= since[1]


class Rows(Part):
    """Rows read just now (live jobs, jobs that ended since their shard's summary, all of
    them when there is no summary)."""

    def __init__(self, rows: Iterable[Row]):
        self.rows = sorted(rows, key=order, reverse=True)
        self.totals = totals_of(self.rows)

    def newest(self, keys, since):
        for r in self.rows:
            if (keys is None or key_of(r) in keys) and (since is None or newer(r["submitted"], since)):
                yield order(r), r


class Listing:
    """The jobs of a root (or some of them), as ``ls`` counts and shows them."""

    def __init__(self, parts: List[Part]):
        self.parts = parts
        self._totals: Optional[Dict[Key, Totals]] = None

    @classmethod
    def of_rows(cls, rows: Iterable[Row]) -> "Listing":
        return cls([Rows(rows)])

    def totals(self) -> Dict[Key, Totals]:
        if self._totals is None:
            out: Dict[Key, Totals] = {}
            for part in self.parts:
                for key, t in part.totals.items():
                    if key in out:
                        out[key].merge(t)
                    else:
                        out[key] = t.copy()
            self._totals = out
        return self._totals

    def runs(self) -> Set[str]:
        return {key[0] for key in self.totals()}

    def select(self, run: Optional[str] = None, label: Optional[str] = None, function: Optional[str] = None,
               status: Optional[List[str]] = None, newer_than: Optional[float] = None,
               now: Optional[float] = None) -> "Selection":
        """The rows that match every filter given (``run``: a unique prefix, see :func:`resolve_run`;
        ``newer_than``: seconds since submission)."""
        if run is not None:
            run = resolve_run(self.runs(), run)
        keys = None
        if run is not None or label is not None or function is not None or status:
            keys = {k for k in self.totals() if (run is None or k[0] == run) and (label is None or k[1] == label)
                    and (function is None or k[2] == function) and (not status or k[3] in status)}
        since = None
        if newer_than is not None:
            import time
            cutoff = (time.time() if now is None else now) - newer_than
            since = (iso_time(cutoff), cutoff)
        return Selection(self, keys, since)

    def rows(self) -> List[Row]:
        return self.select().rows()

    def newest_run(self) -> str:
        """The run that started last (by its first job's submission, then id)."""
        first: Dict[str, Tuple[str, str]] = {}
        for key, t in self.totals().items():
            if t.first is not None and (key[0] not in first or t.first < first[key[0]]):
                first[key[0]] = t.first
        if not first:
            raise ValueError("the root has no jobs")
        return max(first, key=lambda run: first[run])


class Selection:
    """The rows of a listing that match filters: counted from the totals, read only as far as
    they are shown."""

    def __init__(self, listing: Listing, keys: Optional[Set[Key]], since: Optional[Tuple[str, float]]):
        self.listing, self.keys, self.since = listing, keys, since
        self._totals: Optional[Dict[Key, Totals]] = None

    def _newest(self) -> Iterator[Row]:
        streams = [p.newest(self.keys, self.since) for p in self.listing.parts]
        for _, row in heapq.merge(*streams, key=lambda item: item[0], reverse=True):
            yield row

    def totals(self) -> Dict[Key, Totals]:
        if self._totals is None:
            if self.since is not None:  # counted from the rows (newest first, as far as the age goes)
                self._totals = totals_of(self._newest())
            else:
                self._totals = {k: t for k, t in self.listing.totals().items() if self.keys is None or k in self.keys}
        return self._totals

    def __len__(self) -> int:
        return sum(t.n for t in self.totals().values())

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for key, t in self.totals().items():
            out[key[3]] = out.get(key[3], 0) + t.n
        return out

    def runs(self) -> Set[str]:
        return {key[0] for key in self.totals()}

    def newest(self, n: int) -> List[Row]:
        """The newest ``n`` rows, oldest first."""
        out: List[Row] = []
        for row in self._newest():
            if len(out) >= n:
                break
            out.append(row)
        return out[::-1]

    def rows(self) -> List[Row]:
        """Every row, oldest first."""
        return list(self._newest())[::-1]

    def groups(self, by: str) -> List[Dict[str, Any]]:
        """One entry per run, label or function (``by``): its jobs, counts, first submission,
        time run in all, span from the first start to the last end, and labels; in the order
        of their first submissions."""
        index = ("run", "label", "function").index(by)
        merged: Dict[str, Tuple[Totals, Dict[str, int], Set[str]]] = {}
        for key, t in self.totals().items():
            name = key[index] or "-"
            if name not in merged:
                merged[name] = (Totals(), {}, set())
            total, counts, labels = merged[name]
            total.merge(t)
            counts[key[3]] = counts.get(key[3], 0) + t.n
            if key[1]:
                labels.add(key[1])
        out = []
        for name, (t, counts, labels) in sorted(merged.items(), key=lambda kv: kv[1][0].first or ("", "")):
            out.append({by: name, "jobs": t.n, "counts": counts_text(counts),
                        "first_submitted": t.first[0] if t.first else "",
                        "run_seconds": round(t.ms / 1000, 3) if t.timed else 0,
                        "span_seconds": round(t.end - t.start, 3) if t.start is not None and t.end is not None
                        else None, "labels": sorted(labels)})
        return out


def counts_text(counts: Dict[str, int]) -> str:
    """``2 finished, 11 queued``: counts per status, in :data:`STATUS_ORDER`."""
    return ", ".join("{} {}".format(counts[s], s) for s in sorted(
        counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER), s)))


def live_rows(root: Root) -> List[Row]:
    """The jobs not yet ended, found from the live work's own indexes (``pending/``,
    ``running/``, the queues) in one pass, so the records of the root's ended jobs - nearly
    all of them, in a root of 10^5 - are not read."""
    found = protocol.find_tokens(root)
    running = {j: f.token for j, f in found.items() if f.status == Status.RUNNING}
    return [r for r in read_rows(root, sorted(found), running) if r["status"] in LIVE]


def running_claims(root: Root) -> Dict[str, Any]:
    """The claims in ``running/`` by job id (one listing): a queued job claimed is running."""
    return {token.job_id: token for token, _ in protocol.running_claims(root)}


def job_rows(root: Root, live_only: bool = False) -> List[Row]:
    """Every job of the root, oldest first, each read from its records (``live_only``: only
    the jobs not yet ended, see :func:`live_rows`). :func:`hither_fs.summary.listing` gives
    the same rows without reading every ended job's records."""
    if live_only:
        return sorted(live_rows(root), key=order)
    return sorted(read_rows(root, job_ids(root), running_claims(root)), key=order)


def matching_runs(runs: Iterable[str], prefix: str) -> List[str]:
    """The runs whose id starts with ``prefix`` - or, if none does, ends with ``-prefix`` (its
    process id: runs are ``<UTC start>-<host>-<pid>``)."""
    runs = set(runs)
    return sorted(r for r in runs if r.startswith(prefix)) or sorted(r for r in runs if r.endswith("-" + prefix))


def resolve_run(runs: Iterable[str], prefix: str) -> str:
    """The run :func:`matching_runs` names - exactly one, or a ValueError saying which."""
    matches = matching_runs(runs, prefix)
    if prefix in matches:
        return prefix
    if not matches:
        raise ValueError("no run {!r} in the root (hither-fs ls --by run lists them)".format(prefix))
    if len(matches) > 1:
        raise ValueError("run {!r} is ambiguous: {}{}".format(prefix, ", ".join(matches[:5]),
                                                            ", ..." if len(matches) > 5 else ""))
    return matches[0]


def newest_run(rows: Iterable[Row]) -> str:
    """The run that started last (by its first job's submission, then id)."""
    return Listing.of_rows(rows).newest_run()


def select(rows: Iterable[Row], run: Optional[str] = None, label: Optional[str] = None,
           function: Optional[str] = None, status: Optional[List[str]] = None,
           newer_than: Optional[float] = None, now: Optional[float] = None) -> List[Row]:
    """The rows of a list that match every filter given, oldest first (see :meth:`Listing.select`)."""
    return Listing.of_rows(rows).select(run, label, function, status, newer_than, now).rows()


def resolve_job(root: Root, prefix: str) -> str:
    """The job whose id starts with ``prefix`` (hex, at least 2 characters: one shard is listed).

    ValueError when there is none or more than one, naming them.
    """
    prefix = prefix.strip().lower()
    if not (2 <= len(prefix) <= JOB_ID_LENGTH) or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError("{!r} is not a job id or a prefix of one (2 to {} hex digits)".format(prefix, JOB_ID_LENGTH))
    if len(prefix) == JOB_ID_LENGTH:
        if not protocol.job_exists(root, prefix):
            raise ValueError("no job {} in root {}".format(prefix, root.path))
        return prefix
    shard = os.path.join(root.layout.jobs, prefix[:2])
    matches = sorted(j for j in listdir(shard) if is_job_id(j) and j.startswith(prefix))
    if not matches:
        raise ValueError("no job starting with {} in root {}".format(prefix, root.path))
    if len(matches) > 1:
        raise ValueError("job id {} is ambiguous: {}{}".format(prefix, ", ".join(matches[:5]),
                                                                ", ..." if len(matches) > 5 else ""))
    return matches[0]

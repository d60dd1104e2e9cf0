"""``hither-fs du``: what a root occupies, so that a user can see what a quota is spent on.

One walk of the root (``os.scandir``, an explicit stack, no symlink followed)
counts every file and directory, the root itself included: apparent bytes
(``st_size``), disk bytes (``st_blocks * 512``, what a byte quota charges) and
inodes (what a file quota charges), a hard-linked file once. The total is
split by area, the root's top-level entries (``queue``, ``pending`` and
``running`` together are "live work"; ``summary``, the listing's cache of the
ended jobs, counts with "jobs"; the root itself, ``root.json`` and anything
unexpected are "other"), and by the jobs' function, status and age:
each group's job directories, and the store blobs its jobs' arguments and
results refer to - once per group, so a blob shared by two groups counts in both.

Only directories and each job's ``spec.json`` and ``state.json`` are opened,
the latter by :func:`hither_fs.protocol.read_spec` / ``read_state``, which
refuse FIFOs, devices, symlinks and oversized records; everything else is only
``lstat``-ed. A directory that cannot be listed is noted, not fatal; a job
whose records cannot be read counts as function ``?`` / status ``damaged``.
"""

import os
import stat
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from . import protocol
from .protocol import Status
from .root import Root
from .runtime.files import CorruptFileError
from .runtime.layout import is_job_id
from .runtime.serialization import blob_refs

#: Areas in the order they are shown; a top-level name not in ``_AREA_OF`` is "other".
AREAS = ("jobs", "store", "cache", "live work", "workers", "logs", "code", "images", "other")
_AREA_OF = {"jobs": "jobs", "summary": "jobs", "store": "store", "cache": "cache", "workers": "workers", "logs": "logs", "code": "code",
            "images": "images", "queue": "live work", "pending": "live work", "running": "live work"}
#: Age buckets of jobs, by the mtime of their state.json: name, upper bound in days.
AGES = (("< 1 day", 1.0), ("1-7 days", 7.0), ("7-30 days", 30.0), ("> 30 days", float("inf")))
DAMAGED = "damaged"
SHARED_NOTE = "a store blob that jobs of several groups refer to counts in each of them"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Count:
    """Bytes and inodes of some files and directories."""

    bytes: int = 0   # apparent: the sum of st_size
    disk: int = 0    # allocated: st_blocks * 512
    inodes: int = 0

    def add(self, other: "Count") -> None:
        self.bytes += other.bytes
        self.disk += other.disk
        self.inodes += other.inodes


@dataclass
class Group(Count):
    """Jobs of one function, status or age: their directories (the counts) and the
    distinct store blobs they refer to."""

    jobs: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    blob_disk: int = 0


@dataclass
class Usage:
    """What a root occupies. ``total`` is the sum of ``areas``; ``all_jobs`` counts each
    blob once; the contents of ``unreadable`` directories are missing from the counts."""

    path: str
    total: Count
    areas: Dict[str, Count]
    by_function: Dict[str, Group]
    by_status: Dict[str, Group]
    by_age: Dict[str, Group]
    all_jobs: Group
    unreadable: List[str]

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), note=SHARED_NOTE)


def _of(st: os.stat_result) -> Count:
    return Count(st.st_size, st.st_blocks * 512, 1)


class Walk:
    """The one pass over the root: totals and areas; each job's count, age (mtime of its
    state.json, else of its entry) and whether it is a directory; each blob's and each
    cache entry's count and mtime (keyed ``<2 hex>/<name>``); the jobs workers claimed.
    (Also what ``hither-fs gc`` decides from.)"""

    def __init__(self, path: str):
        self.total, self.areas = Count(), {a: Count() for a in AREAS}
        self.jobs: Dict[str, Count] = {}
        self.mtimes: Dict[str, float] = {}
        self.job_dirs: Set[str] = set()
        self.blobs: Dict[str, Count] = {}
        self.cache_entries: Dict[str, Count] = {}
        self.file_mtimes: Dict[str, float] = {}  # of blobs ("store/ab/name") and cache entries ("cache/ab/name")
        self.linked: Set[str] = set()  # those of them with more than one name
        self.claimed: Set[str] = set()
        self.unreadable: List[str] = []
        self._seen: Set[Tuple[int, int]] = set()
        self._count(os.stat(path), "other", None)  # the root itself may be reached through a symlink
        stack: List[Tuple[str, Tuple[str, ...]]] = [(path, ())]
        while stack:
            directory, rel = stack.pop()
            for name, st in self._list(directory, follow=not rel):
                sub = rel + (name,)
                top, depth = sub[0], len(sub)
                job = sub[2] if top == "jobs" and depth >= 3 and is_job_id(sub[2]) and sub[1] == sub[2][:2] else None
                self._count(st, _AREA_OF.get(top, "other"), job)
                if job and (depth == 3 or (depth == 4 and name == "state.json")):
                    self.mtimes[job] = st.st_mtime  # a job's directory is listed before its state.json
                    if depth == 3 and stat.S_ISDIR(st.st_mode):
                        self.job_dirs.add(job)  # not a file or a symlink: its records may be read
                elif top in ("store", "cache") and depth == 3 and not name.startswith(".") and \
                        (top == "store" or name.endswith(".json")) and stat.S_ISREG(st.st_mode):
                    (self.blobs if top == "store" else self.cache_entries)[sub[1] + "/" + name] = _of(st)
                    self.file_mtimes["/".join(sub)] = st.st_mtime
                    if st.st_nlink > 1:
                        self.linked.add("/".join(sub))  # another name keeps its bytes (code/envs, a cache)
                elif top == "running" and depth == 2:
                    token = protocol.Token.parse(name)
                    if token is not None and token.worker:
                        self.claimed.add(token.job_id)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((os.path.join(directory, name), sub))

    def _list(self, directory: str, follow: bool) -> List[Tuple[str, os.stat_result]]:
        """Names and lstats in ``directory``, which is not followed if a symlink took its place."""
        out: List[Tuple[str, os.stat_result]] = []
        try:
            fd = os.open(directory, _DIR_FLAGS | (0 if follow else getattr(os, "O_NOFOLLOW", 0)))
        except FileNotFoundError:
            return out  # removed since its parent was listed: a live root changes
        except OSError:
            self.unreadable.append(directory)
            return out
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        out.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        pass
        except OSError:
            self.unreadable.append(directory)
        finally:
            os.close(fd)
        return out

    def _count(self, st: os.stat_result, area: str, job: Optional[str]) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self._seen:
                return  # another name of a file counted already
            self._seen.add((st.st_dev, st.st_ino))
        count = _of(st)
        self.total.add(count)
        self.areas[area].add(count)
        if job is not None:
            self.jobs.setdefault(job, Count()).add(count)


def blob_keys(value: Any) -> Set[str]:
    """``<2 hex>/<name>`` of each store blob an encoded value refers to (of a malformed
    value, which fsck reports, those found before the damage)."""
    keys: Set[str] = set()
    try:
        for sha1, ext in blob_refs(value):
            if isinstance(sha1, str) and len(sha1) == 40:
                keys.add("{}/{}{}".format(sha1[:2], sha1, ext))
    except (KeyError, TypeError, AttributeError, RecursionError):
        pass
    return keys


def source_key(spec: Any) -> Set[str]:
    """``<2 hex>/<name>`` of the blob holding a job's function source as submitted (if any)."""
    function = spec.get("function") if isinstance(spec, dict) else None
    sha1 = function.get("source") if isinstance(function, dict) else None
    return {"{}/{}".format(sha1[:2], sha1)} if isinstance(sha1, str) and len(sha1) == 40 else set()


def _describe(root: Root, job_id: str, claimed: bool) -> Tuple[str, str, Set[str]]:
    """A job's function, status (``running`` when a worker has claimed it) and blobs."""
    function, status, blobs = "?", DAMAGED, set()
    try:
        spec = protocol.read_spec(root, job_id)
        name = spec["function"].get("name") if isinstance(spec.get("function"), dict) else None
        function = name if isinstance(name, str) else "?"
        blobs.update(blob_keys(spec.get("args")) | source_key(spec))
    except (OSError, CorruptFileError):
        pass
    try:
        state = protocol.read_state(root, job_id)
        status = state["status"] if isinstance(state.get("status"), str) else DAMAGED
        status = Status.RUNNING.value if status == Status.QUEUED and claimed else status
        if status == Status.FINISHED and isinstance(state.get("result"), dict):
            blobs.update(blob_keys(state["result"].get("value")))
    except (OSError, CorruptFileError):
        pass
    return function, status, blobs


def disk_usage(root: Root, now: Optional[float] = None) -> Usage:
    """Count what ``root`` occupies (see the module docstring).

    Jobs' ages are measured against ``now`` (default: this machine's clock). That is
    good enough here because du only reports and never deletes: removing jobs by age
    would need more care (the clocks of nodes differ).
    """
    walk = Walk(root.path)
    now = time.time() if now is None else now
    by: Dict[str, Dict[str, Group]] = {"function": {}, "status": {}, "age": {name: Group() for name, _ in AGES}}
    by["all"] = {"": Group()}
    refs: Dict[Tuple[str, str], Set[str]] = {}
    for job_id, count in walk.jobs.items():
        function, status, blobs = _describe(root, job_id, job_id in walk.claimed) \
            if job_id in walk.job_dirs else ("?", DAMAGED, set())
        seconds = now - walk.mtimes.get(job_id, now)
        age = next(name for name, days in AGES if seconds < days * 86400)
        for view, name in (("function", function), ("status", status), ("age", age), ("all", "")):
            group = by[view].setdefault(name, Group())
            group.jobs += 1
            group.add(count)
            refs.setdefault((view, name), set()).update(blobs)
    for (view, name), blobs in refs.items():
        group = by[view][name]
        for blob in filter(None, map(walk.blobs.get, blobs)):  # a missing blob is fsck's business
            group.blobs += 1
            group.blob_bytes += blob.bytes
            group.blob_disk += blob.disk
    rank = {name: i for i, name in enumerate([s.value for s in Status] + ["", DAMAGED])}  # "": any other
    by_function = sorted(by["function"].items(), key=lambda kv: (-kv[1].disk - kv[1].blob_disk, kv[0]))
    by_status = sorted(by["status"].items(), key=lambda kv: (rank.get(kv[0], rank[""]), kv[0]))
    return Usage(root.path, walk.total, walk.areas, dict(by_function), dict(by_status), by["age"],
                 by["all"][""], walk.unreadable)


def human(n: float) -> str:
    """``n`` bytes for a person: 999 B, 1.2 kB, 3.4 MB (powers of 1000)."""
    units = iter(("kB", "MB", "GB", "TB", "PB"))
    unit = "B"
    while n >= 999.95 and unit != "PB":
        n, unit = n / 1000.0, next(units)
    return "{} B".format(int(n)) if unit == "B" else "{:.1f} {}".format(n, unit)

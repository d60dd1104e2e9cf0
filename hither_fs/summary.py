"""A summary of the ended jobs of each shard of ``jobs/``, so that ``hither-fs ls`` reads 256
small files and the live jobs instead of two records per job.

``summary/<2 hex>.jsonl`` holds the rows (:data:`hither_fs.listing.FIELDS`) of the
final jobs - finished, error, cancelled - of ``jobs/<2 hex>/``, newest first, one
JSON array per line, after a line that names the format and a checksum and a
JSON header: the shard directory's mtime when it was read (the *stamp*), the
ids of its other jobs (live, damaged, or ended too recently to be kept), and
the totals of the rows per (run, label, function, status), from which ``ls``
counts without reading a row.

It is a cache, and never makes ``ls`` wrong, because a final job changes in
only two ways, and both change the shard directory's mtime:

- it is removed (``hither-fs gc``, or by hand): an entry of the shard goes;
- it is relabelled: :func:`write_label` makes the new ``label.json`` in the
  shard and renames it into the job's directory - an entry of the shard goes,
  in the same rename that makes the label appear.

New jobs come in as entries of the shard too; a live job that ends changes
only its own directory, but the summary lists it among the *other* jobs,
whose records are read every time. So a summary whose stamp is the shard's
mtime now is exact: its rows, plus the other jobs read now. One whose stamp
differs (or is null) is brought up to date: the shard is listed, each kept
row's job directory is looked at (its mtime, also kept, says whether it
changed since), and only new or changed jobs are read. A summary that is
missing, damaged (its checksum), of another format or not readable is
built again; where the root cannot be written (a reader without write
access) everything is computed and nothing is saved.

Clocks: a stamp or a row is kept only if it is older than the summary's
own temporary file, made before the shard was looked at (on the same file
system, by the same clock that stamps directories). A change made in the same
tick of a coarse clock as the look could otherwise leave the mtime as it was
(the "racy timestamp" problem); this way any change after the look gives an
mtime that differs from the one kept. The mtimes a summary is checked by
are read through an open of the directory, as the records are read: on NFS,
close-to-open consistency is what a client promises for an open, not for a
cached ``lstat``.

Several processes on several nodes may write a shard's summary at once: each
writes a temporary file and renames it into place, the last one wins, and
each was exact for the stamp it carries. Hand edits of a final job's records
are not seen (the summary keeps the rows); ``hither-fs fsck`` reports such a
summary and ``--repair`` removes it, as deleting ``summary/`` by hand does.
``hither-fs gc`` brings the summaries of the shards it removed jobs from up to
date at once (:func:`refresh`). ``HITHER_FS_SUMMARY=0`` lists without summaries (every job's records read).
"""

import json
import os
import stat
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from . import protocol
from .listing import (FIELDS, ISO_TIME, Key, Listing, Part, Row, Rows, Totals, job_ids, job_row, order, read_rows,
                      running_claims, shards)
from .protocol import FINAL_VALUES
from .root import Root
from .runtime.files import (CorruptFileError, listdir, makedirs, overwrite, read_bytes, remove_quietly, temp_name,
                            write_new)
from .runtime.layout import is_job_id

#: The format of the summary files this version reads and writes (any other is built again).
FORMAT = 1
MAGIC = b"hither_fs-summary"
#: A summary bigger than this is damage (a shard of 10^5 ended jobs makes some 20 MB).
LIMIT = 1 << 30
#: Where a line's group number starts: ``["<submitted: 27>","<id: 16>",<group>,...``.
_GROUP_AT = 2 + 27 + 3 + 16 + 2
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _mtime(path: str) -> Optional[int]:
    """The mtime (ns) of the directory ``path``, opened (see the module docstring); None if it
    is gone, not a directory or a symbolic link."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else None
    finally:
        os.close(fd)


def shard_mtime(root: Root, name: str) -> Optional[int]:
    """The mtime (ns) of shard ``name`` of ``jobs/``, as a summary's stamp records it."""
    return _mtime(os.path.join(root.layout.jobs, name))


def _line(row: Row, group: int, mtime: int) -> bytes:
    return json.dumps([row["submitted"], row["id"], group, mtime] + [row[f] for f in FIELDS[6:]],
                      separators=(",", ":")).encode("ascii")


def _keepable(row: Row) -> bool:
    """Whether a row may go into a summary: its job has ended, and its time sorts as it is."""
    return row["status"] in FINAL_VALUES and bool(ISO_TIME.match(row["submitted"]))


class Shard(Part):
    """The summary of one shard: the keys and totals of its groups, and its rows as lines
    (bytes, newest first), each read only when it is listed."""

    def __init__(self, name: str, stamp: Optional[int], others: List[str], keys: List[Key],
                 totals: List[Totals], body: bytes):
        self.name, self.stamp, self.others, self.keys, self.body = name, stamp, others, keys, body
        self.by_group = totals
        self.totals = {}
        for key, t in zip(keys, totals):
            self.totals[key] = t

    def lines(self) -> List[bytes]:
        return self.body.split(b"\n")[:-1]

    def row(self, line: bytes) -> Row:
        v = json.loads(line)
        run, label, function, status = self.keys[v[2]]
        return {"id": v[1], "status": status, "function": function, "run": run, "label": label, "submitted": v[0],
                "attempt": v[4], "worker": v[5], "host": v[6], "start": v[7], "end": v[8], "seconds": v[9],
                "queue": v[10], "error": v[11]}

    def newest(self, keys: Optional[Set[Key]], since: Optional[Tuple[str, float]]) -> Iterator[Tuple[Tuple[str, str], Row]]:
        wanted = None if keys is None else {i for i, k in enumerate(self.keys) if k in keys}
        if wanted is not None and not wanted:
            return
        body, pos, end = self.body, 0, len(self.body)
        oldest = since[0].encode("ascii") if since is not None else None
        while pos < end:
            nl = body.index(b"\n", pos)
            if oldest is not None and body[pos + 2:pos + 29] < oldest:
                return  # (lines are newest first; their times are the protocol's, which sort as times)
            if wanted is None or int(body[pos + _GROUP_AT:body.index(b",", pos + _GROUP_AT)]) in wanted:
                row = self.row(body[pos:nl])
                yield order(row), row
            pos = nl + 1

    def encode(self) -> bytes:
        header = json.dumps({"shard": self.name, "stamp": self.stamp, "others": self.others, "groups": [
            [*k, t.n, *(t.first or ("", "")), t.timed, t.ms, t.start, t.end]
            for k, t in zip(self.keys, self.by_group)]}, separators=(",", ":")).encode("ascii") + b"\n"
        rest = header + self.body
        return b"%s %d %d %d\n" % (MAGIC, FORMAT, zlib.crc32(rest), len(rest)) + rest


def decode(data: bytes, name: str) -> Shard:
    """The summary of shard ``name`` in ``data``; ValueError if it is damaged, of another format
    or of another shard."""
    first = data.find(b"\n")
    magic = data[:first].split(b" ") if first > 0 else []
    if len(magic) != 4 or magic[0] != MAGIC:
        raise ValueError("not a summary")
    if magic[1] != str(FORMAT).encode():
        raise ValueError("format {} (this version reads {})".format(magic[1].decode("ascii", "replace"), FORMAT))
    rest = memoryview(data)[first + 1:]
    if not (magic[3].isdigit() and int(magic[3]) == len(rest) and magic[2].isdigit()
            and int(magic[2]) == zlib.crc32(rest)):
        raise ValueError("cut short or changed (its checksum)")
    split = data.index(b"\n", first + 1)
    header = json.loads(data[first + 1:split])
    body = data[split + 1:]
    if not (isinstance(header, dict) and header.get("shard") == name and isinstance(header.get("others"), list)
            and isinstance(header.get("groups"), list)):
        raise ValueError("not the summary of shard {}".format(name))
    stamp = header.get("stamp")
    if not (stamp is None or isinstance(stamp, int)) or not all(is_job_id(j) for j in header["others"]):
        raise ValueError("a header of the wrong shape")
    keys, totals = [], []
    for g in header["groups"]:
        if not (isinstance(g, list) and len(g) == 11 and all(isinstance(x, str) for x in g[:4] + g[5:7])
                and all(isinstance(x, int) for x in g[4:5] + g[7:9])):
            raise ValueError("a group of the wrong shape")
        keys.append(tuple(g[:4]))
        totals.append(Totals(g[4], (g[5], g[6]), g[7], g[8], g[9], g[10]))
    if sum(t.n for t in totals) != body.count(b"\n") or (body and not body.endswith(b"\n")):
        raise ValueError("its rows and its totals disagree")
    return Shard(name, stamp, header["others"], keys, totals, body)  # type: ignore[arg-type]


def load(root: Root, name: str) -> Optional[Shard]:
    """The summary of shard ``name`` if there is a usable one (None: missing, damaged, of another
    format, unreadable)."""
    try:
        return decode(read_bytes(root.layout.summary_file(name), limit=LIMIT)[0], name)
    except (OSError, CorruptFileError, ValueError, KeyError, TypeError, RecursionError):
        return None


class _Saver:
    """Writes summaries while it can: a reader who cannot write the root saves nothing."""

    def __init__(self, root: Root, enabled: bool):
        self.root, self.enabled, self.made_dir = root, enabled, False

    def begin(self, name: str) -> Optional[Tuple[str, int]]:
        """A new (empty) temporary file for shard ``name``'s summary, and its mtime (ns): the
        file system's clock before the shard is looked at."""
        if not self.enabled:
            return None
        path = temp_name(self.root.layout.summary_file(name))
        try:
            try:
                write_new(path)
            except FileNotFoundError:
                if self.made_dir:
                    raise
                makedirs(self.root.layout.summaries)  # (an older root, or a new one: made when first needed)
                self.made_dir = True
                write_new(path)
            return path, os.lstat(path).st_mtime_ns
        except OSError:  # read-only for this user, a full disk...: computed, not saved
            remove_quietly(path)
            self.enabled = False
            return None

    def finish(self, tmp: Tuple[str, int], name: str, data: Optional[bytes]) -> None:
        """Write ``data`` into the temporary file and rename it into place (None: drop it)."""
        path = tmp[0]
        try:
            if data is not None:
                overwrite(path, data)
                os.replace(path, self.root.layout.summary_file(name))
        except OSError:
            self.enabled = False
        finally:
            remove_quietly(path)


def _shard(root: Root, name: str, running: Dict[str, Any], saver: _Saver) -> Tuple[Optional[Shard], List[Row]]:
    """One shard: its summary (brought up to date) and the rows read now."""
    shard_dir = os.path.join(root.layout.jobs, name)
    old = load(root, name)
    if old is not None and old.stamp is not None and old.stamp == _mtime(shard_dir):
        fresh = [r for r in (job_row(root, j, running) for j in old.others) if r]
        if not saver.enabled or not any(_keepable(r) for r in fresh):
            return old, fresh
    return _update(root, name, old, running, saver)


def _update(root: Root, name: str, old: Optional[Shard], running: Dict[str, Any],
            saver: _Saver) -> Tuple[Optional[Shard], List[Row]]:
    """Bring shard ``name``'s summary up to date (see the module docstring) and save it if it
    changed and the root can be written."""
    shard_dir = os.path.join(root.layout.jobs, name)
    tmp = saver.begin(name)
    clock = tmp[1] if tmp is not None else None
    stamp = _mtime(shard_dir)
    if stamp is None:  # gone, or not a directory (a symbolic link: read the plain way, never summed up)
        if tmp is not None:
            saver.finish(tmp, name, None)
            if old is not None and not os.path.lexists(shard_dir):
                remove_quietly(root.layout.summary_file(name))  # (gc removed the shard, emptied)
        return None, [r for r in (job_row(root, j, running) for j in _ids(root, name)) if r]
    kept: Dict[str, bytes] = {}  # id -> its line, unchanged
    dropped = False
    if old is not None and old.stamp is not None and old.stamp == stamp:  # nothing came or went, nobody relabelled
        kept = {line[32:48].decode("ascii"): line for line in old.lines()}
        to_read = list(old.others)
    else:
        lines = {line[32:48].decode("ascii"): line for line in old.lines()} if old is not None else {}
        to_read = []
        for job_id in _ids(root, name):
            line = lines.pop(job_id, None)
            if line is not None and _mtime(os.path.join(shard_dir, job_id)) == int(line[_GROUP_AT:].split(b",", 2)[1]):
                kept[job_id] = line
            else:
                dropped = dropped or line is not None
                to_read.append(job_id)
        dropped = dropped or bool(lines)
    fresh: List[Row] = []
    new: List[Tuple[Row, int]] = []
    for job_id in to_read:
        try:  # (an lstat will do here: an mtime older than the records read next is only looked at again)
            mtime: Optional[int] = os.lstat(os.path.join(shard_dir, job_id)).st_mtime_ns
        except OSError:
            mtime = None
        row = job_row(root, job_id, running)
        if row is None:
            continue
        if clock is not None and mtime is not None and mtime < clock and _keepable(row):
            new.append((row, mtime))
        else:
            fresh.append(row)
    if old is not None and not dropped:
        keys, totals = list(old.keys), [t.copy() for t in old.by_group]
        lines_out = list(kept.values())
    else:  # rows went or changed: the totals are counted again
        keys, totals, lines_out = [], [], []
        parsed = [(old.row(line), int(line[_GROUP_AT:].split(b",", 2)[1])) for line in kept.values()] \
            if old is not None else []
        new = parsed + new
    index = {k: i for i, k in enumerate(keys)}
    for row, mtime in new:
        key = (row["run"], row["label"], row["function"], row["status"])
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
            totals.append(Totals())
        totals[index[key]].add(row)
        lines_out.append(_line(row, index[key], mtime))
    lines_out.sort(reverse=True)  # newest first: lines begin with their time and id, of fixed widths
    summary = Shard(name, stamp if clock is not None and stamp < clock else None, sorted(r["id"] for r in fresh),
                    keys, totals, b"".join(line + b"\n" for line in lines_out))
    if tmp is not None:
        unchanged = old is not None and (old.stamp, old.others, old.body) == (summary.stamp, summary.others,
                                                                              summary.body)
        saver.finish(tmp, name, None if unchanged else summary.encode())
    return summary, fresh


def _ids(root: Root, name: str) -> List[str]:
    return [j for j in listdir(os.path.join(root.layout.jobs, name)) if is_job_id(j) and j.startswith(name)]


def enabled() -> bool:
    """Whether summaries are used: ``HITHER_FS_SUMMARY=0`` (or ``off``) reads every job's records."""
    return os.environ.get("HITHER_FS_SUMMARY", "1").strip().lower() not in ("0", "off", "no", "false")


def listing(root: Root, save: bool = True) -> Listing:
    """Every job of ``root`` as ``ls`` lists it: the ended ones from the shards' summaries
    (brought up to date, and saved if ``save`` and the root can be written), the others
    read now. The same rows as :func:`hither_fs.listing.job_rows`."""
    running = running_claims(root)
    if not enabled():
        return Listing.of_rows(read_rows(root, job_ids(root), running))
    saver = _Saver(root, save)
    parts: List[Part] = []
    fresh: List[Row] = []
    for name in shards(root):
        summary, rows = _shard(root, name, running, saver)
        if summary is not None:
            parts.append(summary)
        fresh.extend(rows)
    return Listing(parts + [Rows(fresh)])


def refresh(root: Root, names: Iterable[str]) -> None:
    """Bring the summaries of shards ``names`` up to date now, those that there are (``hither-fs
    gc`` after it removed jobs from them), so that the next ``ls`` finds them so."""
    if enabled():
        running, saver = running_claims(root), _Saver(root, True)
        for name in sorted(set(names)):
            if os.path.lexists(root.layout.summary_file(name)):
                _shard(root, name, running, saver)


def write_label(root: Root, job_id: str, label: str) -> None:
    """Write a job's ``label.json`` so that summaries see it: made in the job's shard and
    renamed from there into the job's directory, one rename that changes the shard's mtime
    as the label appears (a summary's stamp then differs: see the module docstring). A
    writer killed before the rename leaves a temporary file in the shard, which ``hither-fs
    fsck --repair`` removes."""
    tmp = temp_name(os.path.join(os.path.dirname(root.layout.job_dir(job_id)), protocol.LABEL_FILE))
    try:
        write_new(tmp, json.dumps({"label": label}, indent=1, sort_keys=True).encode("utf-8") + b"\n")
        os.rename(tmp, root.layout.job_file(job_id, protocol.LABEL_FILE))
    except BaseException:
        remove_quietly(tmp)
        raise

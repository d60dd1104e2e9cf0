"""What ``hither-fs ls``, ``cancel`` and ``report`` know about each job, and how they pick jobs.

One pass over ``jobs/`` reads each job's ``spec.json`` and ``state.json``
(and its label, if one was set after it was submitted); a queued job that a
worker has claimed is shown running (the claims in ``running/`` say so). Jobs
are picked by run (a unique prefix of its id), label, function, status and
age, and named by unique prefixes of their ids.
"""

import datetime
import os
from typing import Any, Dict, Iterator, List, Optional

from . import protocol
from .protocol import Status
from .root import Root
from .runtime.files import CorruptFileError, listdir
from .runtime.layout import is_job_id

JOB_ID_LENGTH = 16
#: The statuses of jobs that can still be cancelled.
LIVE = (Status.PENDING.value, Status.QUEUED.value, Status.RUNNING.value)


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


def job_ids(root: Root) -> Iterator[str]:
    for shard in sorted(listdir(root.layout.jobs)):
        for job_id in listdir(os.path.join(root.layout.jobs, shard)):
            if is_job_id(job_id):
                yield job_id


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


def job_row(root: Root, job_id: str, running: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """One job's facts (None if it is gone; ``status: damaged`` if its records cannot be read)."""
    try:
        protocol.check_job_dir(root, job_id)
        state = protocol.read_state(root, job_id)
        spec = protocol.read_spec(root, job_id)
    except FileNotFoundError:
        return None
    except (OSError, CorruptFileError) as exc:
        return {"id": job_id, "status": "damaged", "function": "?", "run": "", "label": "", "submitted": "",
                "attempt": 0, "worker": "", "host": "", "start": None, "end": None, "seconds": None,
                "queue": "", "error": str(exc)}
    function, label, status = spec.get("function"), label_of(root, job_id, spec), state.get("status", "?")
    runtime = state.get("runtime") or {}
    if not (isinstance(function, dict) and isinstance(status, str) and isinstance(label, str)
            and isinstance(runtime, dict)):
        return {"id": job_id, "status": "damaged", "function": "?", "run": "", "label": "", "submitted": "",
                "attempt": 0, "worker": "", "host": "", "start": None, "end": None, "seconds": None,
                "queue": "", "error": "its spec or state has fields of the wrong type (hither-fs fsck)"}
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


def job_rows(root: Root, live_only: bool = False) -> List[Dict[str, Any]]:
    """Every job of the root, oldest first. ``live_only``: only the jobs not yet ended, found
    from the live work's own indexes (``pending/``, ``running/``, the queues) in one pass, so
    the records of the root's ended jobs - nearly all of them, in a root of 10^5 - are not read."""
    if live_only:
        found = protocol.find_tokens(root)
        running = {j: f.token for j, f in found.items() if f.status == Status.RUNNING}
        ids: Any = sorted(found)
    else:
        running = {token.job_id: token for token, _ in protocol.running_claims(root)}
        ids = job_ids(root)
    rows = [r for r in (job_row(root, j, running) for j in ids) if r]
    if live_only:
        rows = [r for r in rows if r["status"] in LIVE]
    rows.sort(key=lambda r: r["submitted"])
    return rows


def matching_runs(rows: List[Dict[str, Any]], prefix: str) -> List[str]:
    """The runs whose id starts with ``prefix`` - or, if none does, ends with ``-prefix`` (its
    process id: runs are ``<UTC start>-<host>-<pid>``)."""
    return sorted({r["run"] for r in rows if r["run"].startswith(prefix)}) or sorted(
        {r["run"] for r in rows if r["run"].endswith("-" + prefix)})


def resolve_run(rows: List[Dict[str, Any]], prefix: str) -> str:
    """The run :func:`matching_runs` names - exactly one, or a ValueError saying which."""
    runs = matching_runs(rows, prefix)
    if prefix in runs:
        return prefix
    if not runs:
        raise ValueError("no run {!r} in the root (hither-fs ls --by run lists them)".format(prefix))
    if len(runs) > 1:
        raise ValueError("run {!r} is ambiguous: {}{}".format(prefix, ", ".join(runs[:5]),
                                                            ", ..." if len(runs) > 5 else ""))
    return runs[0]


def newest_run(rows: List[Dict[str, Any]]) -> str:
    """The run that started last (by its first job's submission)."""
    if not rows:
        raise ValueError("the root has no jobs")
    first: Dict[str, str] = {}
    for r in rows:
        if r["run"] not in first or r["submitted"] < first[r["run"]]:
            first[r["run"]] = r["submitted"]
    return max(first, key=lambda run: first[run])


def select(rows: List[Dict[str, Any]], run: Optional[str] = None, label: Optional[str] = None,
           function: Optional[str] = None, status: Optional[List[str]] = None,
           newer_than: Optional[float] = None, now: Optional[float] = None) -> List[Dict[str, Any]]:
    """The rows that match every filter given (``newer_than``: seconds since submission)."""
    if run is not None:
        run = resolve_run(rows, run)
        rows = [r for r in rows if r["run"] == run]
    if label is not None:
        rows = [r for r in rows if r["label"] == label]
    if function is not None:
        rows = [r for r in rows if r["function"] == function]
    if status:
        rows = [r for r in rows if r["status"] in status]
    if newer_than is not None:
        import time
        cutoff = (time.time() if now is None else now) - newer_than
        rows = [r for r in rows if (parse_time(r["submitted"]) or 0) >= cutoff]
    return rows


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

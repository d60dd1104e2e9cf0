"""Where things live inside a root.

The root is a plain directory tree, readable by hand::

    ROOT/
      root.json                         format version and sharing mode
      jobs/3f/3f9a.../                  one directory per job, sharded by id
        spec.json                       what to run: function, version, arguments
        state.json                      status; once final also the result or error and runtime facts
        stdout.txt stderr.txt           console output of the run that counted (only if any)
        downstream/<job id>             jobs waiting for this one (only while they wait)
      queue/<queue>/bell                rung when work is added (idle workers watch it)
      queue/<queue>/scheduler.json      why the queue's jobs wait (Slurm allocations pending, sbatch refusing)
      queue/<queue>/<bucket>/<ticket>   one empty file per job ready to run, in buckets of ~1000
      pending/<token>                   one empty file per job waiting for upstream jobs
      running/<token>.<worker>          one empty file per job a worker has claimed
      workers/<worker id>/              heartbeat.json, and requests to that worker (stop, cancel.<job id>)
      store/ab/<sha1>[.npy]             content-addressed arrays and files
      cache/ab/<key>.json               job cache entries (for JobCache())
      images/                           container images pulled for this root (hither_fs.containers)
      code/envs/ab/<sha1>/              code environments of container jobs, unpacked (read-only in jobs)
      code/runtime/<sha1>/              the hither_fs stand-in that container jobs import
      logs/                             worker logs (local and Slurm allocations)
      summary/<2 hex>.jsonl             the ended jobs of jobs/<2 hex>/ in short, for hither-fs ls: a cache,
                                        rebuilt when out of date, safe to delete (hither_fs.summary)

Ids and hashes are hex, so one level of 256 shards keeps directories small
(a million jobs make 4,000 entries per shard) without spending directories on
small roots. The ``queue``, ``pending`` and ``running`` directories hold only
live work, so finding the next job never looks at finished ones. How the
files of a job change is :mod:`hither_fs.protocol`'s business.

Standard library only: this module also runs inside job containers.
"""

import os
import re
import socket
from typing import Optional, Tuple

# \Z, not $: "$" would also accept a trailing newline
_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_WORKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,119}\Z")


def is_job_id(name: str) -> bool:
    """Whether ``name`` is a job id (and so safe as a path component)."""
    return isinstance(name, str) and _ID_RE.match(name) is not None


def check_job_id(job_id: str) -> str:
    if not is_job_id(job_id):
        raise ValueError("not a hither_fs job id: {!r} (expected 16 hex digits)".format(job_id))
    return job_id


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not _QUEUE_RE.match(name):
        raise ValueError(
            "bad queue name {!r}: use letters, digits, '.', '_' and '-' "
            "(at most 100 characters, not starting with a symbol)".format(name)
        )
    return name


def is_worker_id(name: str) -> bool:
    """Worker ids are path components and parts of token names: no dots, no slashes."""
    return isinstance(name, str) and _WORKER_RE.match(name) is not None


def host_label(host: Optional[str] = None) -> str:
    """A host's name as it appears in worker ids, taker ids and bucket names: its first
    label, with anything but letters, digits and '-' made a '-'."""
    host = socket.gethostname() if host is None else host
    return re.sub(r"[^A-Za-z0-9-]", "-", host.split(".")[0]) or "host"


def host_and_pid(tagged: str) -> Tuple[Optional[str], Optional[int]]:
    """``(host, pid)`` from ``<host>-<pid>-<tag>`` (the tail of worker ids, taker ids and
    bucket names, which say who made them); ``(None, None)`` if it is not of that shape."""
    host, _, pid = tagged.rpartition("-")[0].rpartition("-")
    return (host or None, int(pid)) if pid.isdigit() else (None, None)


def live_console_prefix(name: str, gen: int, attempt: int) -> str:
    """How the hidden live console files of one run start: ``.stdout.txt.g<gen>a<attempt>.``
    (the rest is a temporary-file tag; the commit renames it to ``stdout.txt``)."""
    return ".{}.txt.g{}a{}.".format(name, gen, attempt)


def sharded(base: str, key: str) -> str:
    return os.path.join(base, key[:2], key)


def make_shards(base: str) -> None:
    """Make the 256 shard directories ``00``..``ff`` of ``base`` (those that are missing)."""
    from .files import makedirs  # (files is this module's sibling; layout stays pure paths otherwise)
    for i in range(256):
        makedirs(os.path.join(base, "{:02x}".format(i)))


class Layout:
    """Paths of one root. Pure path arithmetic: nothing here touches the disk."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.marker = os.path.join(self.path, "root.json")
        self.jobs = os.path.join(self.path, "jobs")
        self.queues = os.path.join(self.path, "queue")
        self.pending = os.path.join(self.path, "pending")
        self.running = os.path.join(self.path, "running")
        self.store = os.path.join(self.path, "store")
        self.cache = os.path.join(self.path, "cache")
        self.workers = os.path.join(self.path, "workers")
        self.code = os.path.join(self.path, "code")
        self.images = os.path.join(self.path, "images")
        self.logs = os.path.join(self.path, "logs")
        self.summaries = os.path.join(self.path, "summary")  # made when first written (not a top dir)

    def top_dirs(self):
        return [self.jobs, self.queues, self.pending, self.running,
                self.store, self.cache, self.workers, self.code, self.images, self.logs]

    def job_dir(self, job_id: str) -> str:
        return sharded(self.jobs, check_job_id(job_id))

    def job_file(self, job_id: str, name: str) -> str:
        return os.path.join(self.job_dir(job_id), name)

    def spec_file(self, job_id: str) -> str:
        return self.job_file(job_id, "spec.json")

    def state_file(self, job_id: str) -> str:
        return self.job_file(job_id, "state.json")

    def downstream_dir(self, job_id: str) -> str:
        return self.job_file(job_id, "downstream")

    def summary_file(self, shard: str) -> str:
        """The summary of the ended jobs of ``jobs/<shard>/`` (see :mod:`hither_fs.summary`)."""
        if len(shard) != 2 or any(c not in "0123456789abcdef" for c in shard):
            raise ValueError("not a shard of jobs/: {!r}".format(shard))
        return os.path.join(self.summaries, shard + ".jsonl")

    def queue_dir(self, queue: str) -> str:
        return os.path.join(self.queues, check_queue_name(queue))

    def bell(self, queue: str) -> str:
        return os.path.join(self.queue_dir(queue), "bell")

    def scheduler_note(self, queue: str) -> str:
        return os.path.join(self.queue_dir(queue), "scheduler.json")

    def worker_dir(self, worker_id: str) -> str:
        if not is_worker_id(worker_id):
            raise ValueError("not a hither_fs worker id: {!r}".format(worker_id))
        return os.path.join(self.workers, worker_id)

    def heartbeat(self, worker_id: str) -> str:
        return os.path.join(self.worker_dir(worker_id), "heartbeat.json")

    def stop_request(self, worker_id: str) -> str:
        return os.path.join(self.worker_dir(worker_id), "stop")

    def cancel_request(self, worker_id: str, job_id: str) -> str:
        return os.path.join(self.worker_dir(worker_id), "cancel." + check_job_id(job_id))

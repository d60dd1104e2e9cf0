"""Where things live inside a root.

The root is a plain directory tree, readable by hand::

    ROOT/
      root.json                  format version and sharing mode
      jobs/3f/3f9a.../           one directory per job, sharded by id
        spec.json                what to run: function, version, arguments
        state.json               status, attempts, worker, timestamps
        stdout.txt stderr.txt    console output of the attempt that counted (if any)
        result.json | error.json the outcome
        runtime.json             host, pid, times, CPU seconds, peak memory
        attempt-N/               scratch of a running attempt (live logs)
      queue/<queue>/<ticket>     one empty file per job ready to run
      pending/<job id>           jobs waiting for upstream jobs
      running/<job id>           jobs claimed by a worker (lease checks)
      store/ab/<sha1>[.npy]      content-addressed arrays and files
      cache/ab/<key>.json        job cache entries (for JobCache())
      workers/<worker id>.json   worker heartbeats (and <worker id>.stop requests)
      images/                    container images pulled for this root (hither_fs.containers)
      code/envs/ab/<sha1>/       code environments of container jobs, unpacked (read-only in jobs)
      code/runtime/<sha1>/       the hither_fs stand-in that container jobs import
      logs/                      worker logs (local and Slurm allocations)

Ids and hashes are hex, so one level of 256 shards keeps directories small
(a million jobs make 4,000 entries per shard) without spending directories on
small roots; the ``queue``, ``pending`` and ``running`` directories hold only
live work, so finding the next job never looks at finished ones.

Standard library only: this module also runs inside job containers.
"""

import os
import re

# \Z, not $: "$" would also accept a trailing newline
_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


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


def sharded(base: str, key: str) -> str:
    return os.path.join(base, key[:2], key)


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

    def top_dirs(self):
        return [self.jobs, self.queues, self.pending, self.running,
                self.store, self.cache, self.workers, self.code, self.images]

    def job_dir(self, job_id: str) -> str:
        return sharded(self.jobs, check_job_id(job_id))

    def job_file(self, job_id: str, name: str) -> str:
        return os.path.join(self.job_dir(job_id), name)

    def attempt_dir(self, job_id: str, attempt: int) -> str:
        return os.path.join(self.job_dir(job_id), "attempt-{}".format(int(attempt)))

    def queue_dir(self, queue: str) -> str:
        return os.path.join(self.queues, check_queue_name(queue))

    def pending_ticket(self, job_id: str) -> str:
        return os.path.join(self.pending, check_job_id(job_id))

    def running_ticket(self, job_id: str) -> str:
        return os.path.join(self.running, check_job_id(job_id))

    def worker_file(self, worker_id: str) -> str:
        return os.path.join(self.workers, worker_id + ".json")

    def worker_stop_request(self, worker_id: str) -> str:
        return os.path.join(self.workers, worker_id + ".stop")

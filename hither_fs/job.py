"""``Job``: a handle on one job in a root.

A ``Job`` holds nothing but an id and a root, so any process can make one
(``hi.get_job(id)``) and see the same job: its status, result, error, console
output and runtime facts all come from the job's directory.
"""

import logging
import os
import time
from typing import Any, Dict, Optional

from . import queue
from .errors import JobNotFinishedError, job_error
from .root import FINAL_STATUSES, FINISHED, PENDING, Root
from .runtime.execute import upstream_value
from .runtime.files import CorruptFileError, read_text_tail

_UNSET = object()
log = logging.getLogger("hither_fs.job")

#: Poll intervals while waiting: fast at first (a quick job is noticed within
#: a millisecond or two), backing off to 10 ms, and over the first minute of a
#: long wait to 50 ms. Each look is one stat call, so a long wait costs a
#: fraction of a percent of a core.
POLL_MIN, POLL_MAX, POLL_MAX_LONG, POLL_GROWTH = 0.0005, 0.01, 0.05, 1.3


class Job:
    """A job: a hither function applied to specific arguments."""

    def __init__(self, job_id: str, root: Optional[Root] = None, handler: Any = None):
        self.root = root if isinstance(root, Root) else Root.get(root)
        self.root.layout.job_dir(job_id)  # validates the id
        self.id = job_id
        self._handler = handler
        self._result: Any = _UNSET
        self._spec: Optional[Dict[str, Any]] = None

    # -- facts ---------------------------------------------------------------

    @property
    def spec(self) -> Dict[str, Any]:
        if self._spec is None:
            self._spec = self.root.read_spec(self.id)
        return self._spec

    @property
    def function_name(self) -> str:
        try:
            return self.spec["function"]["name"]
        except CorruptFileError:
            return "?"  # the damaged spec is reported by the job's error

    @property
    def directory(self) -> str:
        """The job's directory in the root (``spec.json``, ``state.json``, ...)."""
        return self.root.layout.job_dir(self.id)

    def get_state(self) -> Dict[str, Any]:
        return self.root.read_state(self.id)

    @property
    def status(self) -> str:
        """``pending``, ``queued``, ``running``, ``finished``, ``error`` or ``cancelled``."""
        return self.get_state()["status"]

    def is_done(self) -> bool:
        return self.status in FINAL_STATUSES

    def get_runtime_info(self) -> Dict[str, Any]:
        """Host, pid, start and end, wall and CPU seconds, peak memory (empty until run)."""
        return self.root.read_job_file(self.id, "runtime.json", {}) or {}

    def get_console_output(self) -> Dict[str, str]:
        """``{'stdout': ..., 'stderr': ...}``: final output, or the live output of a running attempt."""
        state = self.get_state()
        directory = self.directory
        if state["status"] not in FINAL_STATUSES and state.get("attempt"):
            directory = self.root.layout.attempt_dir(self.id, state["attempt"])
        return {name: read_text_tail(os.path.join(directory, name + ".txt")) for name in ("stdout", "stderr")}

    # -- outcome ---------------------------------------------------------------

    def get_result(self) -> Any:
        """The result of a finished job; the job's error if it failed."""
        if self._result is not _UNSET:
            return self._result
        state = self.get_state()
        status = state["status"]
        if status == FINISHED:
            self._result = upstream_value(self.root.layout, self.root.store, self.id)
            return self._result
        if status in FINAL_STATUSES:
            record = self.root.read_job_file(self.id, "error.json", {}) or {
                "type": "JobError", "message": state.get("error") or "no error record"}
            raise job_error(self.id, self.function_name, record)
        raise JobNotFinishedError("job {} ({}) is {}".format(self.id, self.function_name, status))

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait until the job is done; return its result or raise its error.

        ``timeout`` (seconds) raises ``TimeoutError`` if it expires first; the
        job itself goes on.
        """
        self.wait_done(timeout)
        return self.get_result()

    def wait_done(self, timeout: Optional[float] = None) -> str:
        """Wait until the job reaches a final status and return it (never raises the job's error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state_path = self.root.layout.job_file(self.id, "state.json")
        interval = POLL_MIN
        last_sig = None
        next_help = 0.0
        started = time.monotonic()
        status = self.status
        while True:
            try:
                st = os.stat(state_path)
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                sig = None
            if sig != last_sig:
                last_sig = sig
                status = self.status
                if status in FINAL_STATUSES:
                    return status
                interval = POLL_MIN
            now = time.monotonic()
            if now >= next_help:
                # Move things along ourselves: in-process jobs run here, and a
                # pending job is promoted even if no worker is looking.
                if self._handler is not None:
                    try:
                        self._handler.help(self.root)
                    except Exception as exc:  # e.g. sbatch failing for a while: keep waiting, say why
                        log.warning("while waiting for job %s: %s", self.id, exc)
                if status == PENDING:
                    queue.promote_pending(self.root)
                next_help = now + 0.2
            if deadline is not None and now >= deadline:
                raise TimeoutError("job {} ({}) did not finish within {} s (status: {})".format(
                    self.id, self.function_name, timeout, self.status))
            sleep = interval if deadline is None else min(interval, max(0.0, deadline - now))
            time.sleep(sleep)
            cap = min(POLL_MAX_LONG, POLL_MAX + (now - started) / 1500.0)
            interval = min(cap, interval * POLL_GROWTH)

    def cancel(self) -> bool:
        """Cancel the job: a queued or pending job never runs, a running one is killed.

        Returns False if the job had already finished (or failed).
        """
        status = queue.cancel(self.root, self.id)
        return status not in (FINISHED, "error")

    def __repr__(self):
        return "<Job {} {}>".format(self.id, self._spec["function"]["name"] if self._spec else "")

    def __eq__(self, other):
        return isinstance(other, Job) and other.id == self.id and other.root.path == self.root.path

    def __hash__(self):
        return hash((self.id, self.root.path))


def get_job(job_id: str, root: Optional[str] = None) -> Job:
    """Re-attach to a job by id, from any process that sees the root."""
    job = Job(job_id, Root.get(root))
    if not job.root.job_exists(job_id):
        raise LookupError("no job {} in root {}".format(job_id, job.root.path))
    return job

"""The thread that completes ``Job`` futures for ``concurrent.futures.wait``, ``as_completed``
and ``add_done_callback``.

A :class:`~hither_fs.Job` is a ``concurrent.futures.Future`` whose outcome
arrives in the root, written by some other process. The standard library's
``wait`` and ``as_completed`` do not poll: they register a waiter on each
future and sleep until the future is completed. So a job that someone waits
on this way (or that has a done-callback) is *watched*: one daemon thread per
process reads the state of every watched job, completes those that have ended
(notifying their waiters and running their callbacks, in this thread), and
lets their handlers look after their workers - and run in-process jobs - as
``job.wait()`` does. Each pass reads one ``state.json`` per watched job; the
thread sleeps at least four times as long as a pass took (so it uses at most
a fifth of a core however many jobs it watches), from a millisecond up to
half a second as the wait goes on.
"""

import logging
import threading
import time
from typing import Any, Dict, Set

log = logging.getLogger("hither_fs.watch")

POLL_MIN, POLL_MAX, POLL_GROWTH = 0.001, 0.5, 1.2
HELP_INTERVAL = 0.2


class Watcher:
    """Completes the futures of the jobs it watches once they end (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Set[Any] = set()
        self._wake = threading.Event()
        self._thread = None  # type: Any

    def watch(self, job: Any) -> None:
        with self._lock:
            self._jobs.add(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hither_fs-watch", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        interval = POLL_MIN
        next_help = 0.0
        while True:
            with self._lock:
                jobs = list(self._jobs)
            if not jobs:
                self._wake.wait()
                self._wake.clear()
                interval = POLL_MIN
                continue
            started = time.monotonic()
            ended = []
            for job in jobs:
                try:
                    if job._settle():
                        ended.append(job)
                except Exception as exc:  # a removed or damaged job: settle() records its error
                    log.debug("watching job %s: %s", getattr(job, "id", "?"), exc)
                    ended.append(job)
            now = time.monotonic()
            if now >= next_help:
                self._help(j for j in jobs if j not in ended)
                next_help = now + HELP_INTERVAL
            with self._lock:
                self._jobs.difference_update(ended)
            took = time.monotonic() - started
            if self._wake.wait(max(interval, 4 * took)):
                self._wake.clear()
                interval = POLL_MIN
            else:
                interval = min(POLL_MAX, interval * POLL_GROWTH)

    @staticmethod
    def _help(jobs: Any) -> None:
        """Let each distinct handler of the watched jobs start or scale its workers (or run its
        in-process jobs), once per pass, as ``job.wait()`` does."""
        seen: Dict[int, Any] = {}
        for job in jobs:
            handler = getattr(job, "_handler", None)
            if handler is not None and id(handler) not in seen:
                seen[id(handler)] = (handler, job.root)
        for handler, root in seen.values():
            try:
                handler.help(root)
            except Exception as exc:
                log.warning("while watching jobs: %s", exc)


watcher = Watcher()


class Waiters(list):
    """A future's list of waiters that starts watching the job when the standard library adds one."""

    def __init__(self, job: Any) -> None:
        super().__init__()
        self._job = job

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        watcher.watch(self._job)

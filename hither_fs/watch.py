"""The threads that complete ``Job`` futures for ``concurrent.futures.wait``, ``as_completed``
and ``add_done_callback``.

A :class:`~hither_fs.Job` is a ``concurrent.futures.Future`` whose outcome
arrives in the root, written by some other process. The standard library's
``wait`` and ``as_completed`` do not poll: they register a waiter on each
future and sleep until the future is completed. So a job that someone waits
on this way, or that has a done-callback, is *watched*: one daemon thread per
process reads the state of every watched job, completes those that have ended
(notifying their waiters), and lets their handlers look after their workers -
and run in-process jobs - as ``job.wait()`` does. A job stops being watched
when it ends or when nothing waits on it any more. Callbacks run on a second
thread, one after another, so a slow callback delays other callbacks but never
the watching.

Each pass reads one ``state.json`` per watched job; the watcher sleeps at
least four times as long as a pass took (so it uses at most a fifth of a core
however many jobs it watches), from a millisecond up to half a second as the
wait goes on. A read that fails for a while (the filesystem, not the job) is
tried again on the next pass.
"""

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List

log = logging.getLogger("hither_fs.watch")

POLL_MIN, POLL_MAX, POLL_GROWTH = 0.001, 0.5, 1.2
HELP_INTERVAL = 0.2


class Watcher:
    """Completes the futures of the jobs it watches once they end (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Dict[int, Any] = {}  # by identity: two handles on one job are two futures
        self._wake = threading.Event()
        self._thread: Any = None

    def watch(self, job: Any) -> None:
        with self._lock:
            self._jobs[id(job)] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hither_fs-watch", daemon=True)
                self._thread.start()
        self._wake.set()

    def unwatch(self, job: Any) -> None:
        with self._lock:
            self._jobs.pop(id(job), None)

    def _run(self) -> None:
        interval = POLL_MIN
        next_help = 0.0
        while True:
            with self._lock:
                jobs = list(self._jobs.values())
            if not jobs:
                self._wake.wait()
                self._wake.clear()
                interval = POLL_MIN
                continue
            started = time.monotonic()
            ended = []
            for job in jobs:
                try:
                    if job._settle() or not job._waited_on():
                        ended.append(job)
                except Exception as exc:  # the filesystem failing for now: try again next pass
                    log.debug("watching job %s: %s", getattr(job, "id", "?"), exc)
            with self._lock:
                for job in ended:
                    self._jobs.pop(id(job), None)
                left = list(self._jobs.values())
            now = time.monotonic()
            if left and now >= next_help:
                self._help(left)
                next_help = now + HELP_INTERVAL
            took = time.monotonic() - started
            if self._wake.wait(max(interval, 4 * took)):
                self._wake.clear()
                interval = POLL_MIN
            else:
                interval = min(POLL_MAX, interval * POLL_GROWTH)

    @staticmethod
    def _help(jobs: List[Any]) -> None:
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

_callbacks: "queue.Queue[Any]" = queue.Queue()
_callback_thread: Any = None
_callback_lock = threading.Lock()


def _call_back() -> None:
    while True:
        job, fn = _callbacks.get()
        try:
            fn(job)
        except BaseException:  # even SystemExit: one callback must not end the others
            log.exception("a done-callback of job %s raised", getattr(job, "id", "?"))


def run_callbacks(job: Any, callbacks: List[Callable[[Any], Any]]) -> None:
    """Have the callback thread call each of ``callbacks`` with ``job``, in order."""
    global _callback_thread
    with _callback_lock:
        if _callback_thread is None or not _callback_thread.is_alive():
            _callback_thread = threading.Thread(target=_call_back, name="hither_fs-callbacks", daemon=True)
            _callback_thread.start()
    for fn in callbacks:
        _callbacks.put((job, fn))


class Waiters(list):
    """A future's list of waiters that starts watching the job when the standard library adds one."""

    def __init__(self, job: Any) -> None:
        super().__init__()
        self._job = job

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        watcher.watch(self._job)

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

Each full pass reads one ``state.json`` per watched job; the watcher sleeps at
least four times as long as a pass took (so it uses at most a fifth of a core
however many jobs it watches), from a millisecond up to half a second as the
wait goes on. On a root of this machine a job's directory is also watched by
inotify (:mod:`hither_fs.dirwatch`): a change wakes the watcher at once, to read
the state of that job alone, and full passes are only a safety net, at least
``POLL_WATCHED`` apart. A read that fails for a while (the filesystem, not the
job) is tried again on the next pass.
"""

import functools
import logging
import queue
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Set

from . import dirwatch

log = logging.getLogger("hither_fs.watch")

POLL_MIN, POLL_MAX, POLL_GROWTH = 0.001, 0.5, 1.2
#: Full passes at least this far apart while inotify watches every job (a safety net).
POLL_WATCHED = 0.1
HELP_INTERVAL = 0.2


class Watcher:
    """Completes the futures of the jobs it watches once they end (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Dict[int, Any] = {}  # by identity: two handles on one job are two futures
        self._subs: Dict[int, Any] = {}  # the inotify subscriptions of their directories, by the same key
        self._changed: Set[int] = set()  # jobs to look at now: changed, or just watched
        self._watched: Dict[int, int] = {}  # by the same key: how many times watch() was called
        self._new = False  # a job was watched since the last pass: poll fast again
        self._wake = threading.Event()
        self._thread: Any = None

    def watch(self, job: Any) -> None:
        key = id(job)
        with self._lock:
            known = key in self._jobs
            self._jobs[key] = job
            self._watched[key] = self._watched.get(key, 0) + 1
            self._changed.add(key)
            self._new = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hither_fs-watch", daemon=True)
                self._thread.start()
        if not known and dirwatch.is_local(job.root.path):
            sub = dirwatch.subscribe(job.directory, functools.partial(self._on_change, key))
            with self._lock:
                if sub is not None and key in self._jobs and key not in self._subs:
                    self._subs[key], sub = sub, None
                    self._changed.add(key)  # looked at once more: it may have ended before the watch began
            dirwatch.unsubscribe(sub)  # (only one that came too late)
        self._wake.set()

    def unwatch(self, job: Any) -> None:
        self._forget([id(job)])

    def _forget(self, keys: List[int], seen: Optional[Dict[int, int]] = None) -> None:
        """Stop watching these jobs - those of them, with ``seen`` (``_watched`` as a pass
        began), that nobody watched again since: a wait that began after the pass judged a
        job unwaited-for must still see it end."""
        with self._lock:
            if seen is not None:
                keys = [key for key in keys if self._watched.get(key) == seen.get(key)]
            subs = [self._subs.pop(key, None) for key in keys]
            for key in keys:
                self._jobs.pop(key, None)
                self._watched.pop(key, None)
        for sub in subs:
            dirwatch.unsubscribe(sub)

    def _on_change(self, key: int) -> None:
        """inotify saw a file renamed into a watched job's directory (the reading thread calls this)."""
        with self._lock:
            self._changed.add(key)
        self._wake.set()

    def _run(self) -> None:
        interval = POLL_MIN
        next_help = next_pass = 0.0
        while True:
            with self._lock:
                jobs = dict(self._jobs)
                seen = dict(self._watched)
                changed, self._changed = self._changed, set()
                new, self._new = self._new, False
                unwatched = len(self._subs) < len(jobs)  # some are polled only
            if not jobs:
                self._wake.wait()
                self._wake.clear()
                continue
            if new:  # a job just watched: looked at now, and polled fast again
                interval, next_pass = POLL_MIN, 0.0
            started = time.monotonic()
            full = started >= next_pass
            look = list(jobs.values()) if full else [jobs[k] for k in changed if k in jobs]
            ended = []
            for job in look:
                try:
                    if job._settle() or not job._waited_on():
                        ended.append(id(job))
                except Exception as exc:  # the filesystem failing for now: try again next pass
                    log.debug("watching job %s: %s", getattr(job, "id", "?"), exc)
            self._forget(ended, seen)
            now = time.monotonic()
            if len(ended) < len(jobs) and now >= next_help:
                with self._lock:
                    left = list(self._jobs.values())
                self._help(left)
                next_help = now + HELP_INTERVAL
            if full:
                took = time.monotonic() - started
                next_pass = now + max(interval if unwatched else max(interval, POLL_WATCHED), 4 * took)
                interval = min(POLL_MAX, interval * POLL_GROWTH)
            pause = max(0.0, min(next_pass, next_help) - time.monotonic())
            if self._wake.wait(pause):
                self._wake.clear()

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
                help_in_process(root, besides=handler)
            except Exception as exc:
                log.warning("while watching jobs: %s", exc)


watcher = Watcher()

#: This process's in-process handlers that were given jobs (:class:`hither_fs.handlers.DefaultJobHandler`).
IN_PROCESS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def help_in_process(root: Any, besides: Any = None) -> None:
    """Run the queued jobs of this process's in-process handlers in ``root`` (but ``besides``,
    which the caller helps): a job of another handler that is waited for may wait for one of
    theirs, which runs only when this process asks (a pipeline mixing handlers hung)."""
    for handler in list(IN_PROCESS):
        if handler is not besides:
            handler.help_unless_busy(root)


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

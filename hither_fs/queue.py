"""Queues: where the tickets of ready jobs wait, and how a worker finds the front.

A queue is a directory ``queue/<name>/`` of *buckets*, and a bucket is a
directory of at most about a thousand tickets. A ticket is an empty file
named ``<stamp>-<token>`` (see :mod:`hither_fs.protocol` for tokens), where
the stamp is the time it was made in nanoseconds, so names sort oldest first::

    queue/local/
      bell                                              rung when tickets are added
      00000000000000000000-requeued/                    jobs handed back: served first
      01764452810733210876-node3-41207-9f2c/            one submitting process's bucket
        01764452810733291000-3f9a0c1d2e4b5a69.0.1
        ...

Each writing process fills a bucket of its own and starts a new one after
:data:`BUCKET_SIZE` tickets or :data:`BUCKET_AGE` seconds, so no directory
grows without bound and a reader finds the front by listing the small top
directory and then one bucket: the cost of the next claim is the same with a
hundred or a hundred thousand jobs queued. Empty buckets that no writer uses
any more are removed by the workers (``rmdir`` refuses a bucket that gained a
ticket meanwhile, and a writer whose bucket vanished simply starts another).

The *bell* lets an idle worker notice new work with one open per poll instead
of a directory listing: a writer replaces it (at most every
:data:`RING_INTERVAL` seconds) after adding tickets.

Listings may be stale on a shared filesystem (another node's cache); that
only makes a worker try a ticket that is already gone (its claim fails
cleanly) or see a new one a little later. Nothing here decides who gets a
job: the rename in :func:`hither_fs.protocol.claim` does.
"""

import os
import random
import re
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import psutil

from .runtime.files import listdir, read_bytes, remove_quietly, with_parents, write_bytes, write_new
from .runtime.layout import Layout, check_queue_name, host_and_pid, host_label

BUCKET_SIZE = 1000
BUCKET_AGE = 30.0
#: Jobs handed back to the queue go here: its name sorts before every other bucket.
REQUEUE_BUCKET = "00000000000000000000-requeued"
RING_INTERVAL = 0.25
#: Workers that compete for the same tickets spread out: each loss to another worker
#: doubles how many tickets at the front a worker chooses among (up to MAX_SPREAD), and
#: each CONTENTION_MEMORY seconds without a loss halves it again, down to 1 (first in,
#: first out).
MAX_SPREAD = 256
CONTENTION_MEMORY = 2.0

_STAMP = re.compile(r"^[0-9]{20}-")


def is_bucket(name: str) -> bool:
    return bool(_STAMP.match(name))


def is_ticket(name: str) -> bool:
    return bool(_STAMP.match(name))


def ticket_token(name: str) -> str:
    """The token part of a ticket's name."""
    return name[21:]


class TicketWriter:
    """Where this process puts new tickets: a bucket of its own per queue, and the bell.

    One per process and root (:func:`writer_for`).
    """

    def __init__(self, layout: Layout, clock: Callable[[], float] = time.time):
        self.layout = layout
        self.clock = clock
        self._buckets: Dict[str, Tuple[str, int, float]] = {}  # queue -> (bucket, tickets, started)
        self._rung: Dict[str, float] = {}

    def _bucket(self, queue: str) -> str:
        now = self.clock()
        current = self._buckets.get(queue)
        if current is None or current[1] >= BUCKET_SIZE or now - current[2] >= BUCKET_AGE:
            name = "{:020d}-{}-{}-{}".format(time.time_ns(), host_label(), os.getpid(), uuid.uuid4().hex[:4])
            current = (name, 0, now)
        self._buckets[queue] = (current[0], current[1] + 1, current[2])
        return current[0]

    def ticket_path(self, queue: str, token: str, front: bool = False) -> str:
        bucket = REQUEUE_BUCKET if front else self._bucket(queue)
        return os.path.join(self.layout.queue_dir(queue), bucket, "{:020d}-{}".format(time.time_ns(), token))

    def place(self, queue: str, token: str, front: bool = False) -> str:
        """Create the ticket of ``token`` in ``queue`` and return its path."""
        path = self.ticket_path(queue, token, front)
        try:
            with_parents(lambda: write_new(path), os.path.dirname(path))
        except FileNotFoundError:  # a worker removed our (empty, old-looking) bucket just now
            self._buckets.pop(queue, None)
            path = self.ticket_path(queue, token, front)
            with_parents(lambda: write_new(path), os.path.dirname(path))
        return path

    def ring(self, queue: str, force: bool = False) -> None:
        """Tell idle workers of ``queue`` that there is work (at most every RING_INTERVAL s).

        A worker that hears the bell keeps listing the queue for a while (see
        :class:`QueueReader`), so a ticket added just after a ring is found too.
        """
        now = self.clock()
        if not force and now - self._rung.get(queue, -1e9) < RING_INTERVAL:
            return
        self._rung[queue] = now
        bell = self.layout.bell(queue)
        with_parents(lambda: write_bytes(bell, uuid.uuid4().hex.encode()), os.path.dirname(bell))


_writers: Dict[str, TicketWriter] = {}


def writer_for(layout: Layout) -> TicketWriter:
    """This process's ticket writer for a root."""
    w = _writers.get(layout.path)
    if w is None:
        w = _writers[layout.path] = TicketWriter(layout)
    return w


class QueueReader:
    """A worker's view of the front of one queue: cached listings, refreshed when used up.

    ``candidates()`` returns a few tickets from the front (the oldest first,
    or - while other workers compete for the same tickets - from a random
    place near the front), ``drop()`` forgets one that was claimed, ``lost()``
    one that another worker claimed first. A listing is at most ``max_age`` seconds old when used.
    """

    def __init__(self, layout: Layout, queue: str, clock: Callable[[], float] = time.monotonic,
                 max_age: float = 1.0):
        self.layout = layout
        self.queue = check_queue_name(queue)
        self.dir = layout.queue_dir(queue)
        self.clock = clock
        self.max_age = max_age
        self._buckets: List[str] = []
        self._listed_top = -1e9
        self._bucket: Optional[str] = None
        self._tickets: List[str] = []
        self._listed_bucket = -1e9
        self._bell: Optional[bytes] = None
        self._spread = 1
        self._last_loss = -1e9
        self._losses = 0

    def candidates(self, skip: Optional[Dict[str, Any]] = None) -> List[str]:
        """A few tickets from the front (their paths), leaving out the jobs in ``skip``
        (ones that did not fit): for them it looks further, into later buckets."""
        now = self.clock()
        if not self._tickets or now - self._listed_bucket > self.max_age or self._losses >= 2:
            self.refresh(now)
        tickets = self._tickets
        if skip:
            tickets = [n for n in tickets if ticket_token(n)[:16] not in skip]
            more = iter(self._buckets[1:4])
            while not tickets:
                bucket = next(more, None)
                if bucket is None:
                    return []
                names = sorted(n for n in listdir(os.path.join(self.dir, bucket)) if is_ticket(n))
                tickets = [n for n in names if ticket_token(n)[:16] not in skip]
                if tickets:
                    return [os.path.join(self.dir, bucket, n) for n in tickets[:4]]
        # The oldest ticket first (first in, first out) - unless other workers took tickets
        # from under this one lately: then one of the first few, at random, so that workers
        # that listed the same bucket spread out instead of all trying the same ticket.
        while self._spread > 1 and now - self._last_loss > CONTENTION_MEMORY:
            self._spread //= 2
            self._last_loss += CONTENTION_MEMORY
        first = random.randrange(min(self._spread, len(tickets))) if tickets else 0
        names = tickets[first:first + 4] + tickets[:first][:4]
        return [os.path.join(self.dir, self._bucket, name) for name in names]

    def lost(self, path: str) -> None:
        """Say that another worker claimed ``path`` first."""
        self.drop(path)
        self._spread = min(MAX_SPREAD, self._spread * 2)
        self._last_loss = self.clock()
        self._losses += 1  # twice since the last listing: the listing is out of date, list again

    def drop(self, path: str) -> None:
        name = os.path.basename(path)
        if self._tickets and self._tickets[0] == name:
            self._tickets.pop(0)  # the common case: the front
        elif name in self._tickets:
            self._tickets.remove(name)

    def refresh(self, now: Optional[float] = None) -> None:
        """List the front: the top directory (at most every ``max_age`` s), then buckets
        oldest first until one holds tickets. Empty buckets no writer uses are removed."""
        now = self.clock() if now is None else now
        self._tickets = []
        self._listed_bucket = now
        self._losses = 0
        fresh = False
        if now - self._listed_top > self.max_age or not self._buckets:
            self._list_top(now)
            fresh = True
        while True:
            while self._buckets:
                bucket = self._buckets[0]
                names = sorted(n for n in listdir(os.path.join(self.dir, bucket)) if is_ticket(n))
                if names:
                    self._bucket, self._tickets = bucket, names
                    return
                self._buckets.pop(0)
                self._tidy(bucket)
            if fresh:
                return
            self._list_top(now)  # every bucket known was empty: a new one may have come since
            fresh = True

    def _list_top(self, now: float) -> None:
        self._buckets = sorted(n for n in listdir(self.dir) if is_bucket(n))
        self._listed_top = now

    def _tidy(self, bucket: str) -> None:
        # an empty bucket is left to its writer for twice the time it may write into it,
        # or until that writer is gone (its host and pid are in the name)
        try:
            stamp = int(bucket[:20]) / 1e9
        except ValueError:
            return
        host, pid = host_and_pid(bucket[21:])
        gone = host == host_label() and pid is not None and not psutil.pid_exists(pid)
        if gone or time.time() - stamp > 2 * BUCKET_AGE:
            try:
                os.rmdir(os.path.join(self.dir, bucket))
            except OSError:
                pass  # not empty after all, or gone already: both fine

    def bell_rang(self) -> bool:
        """Whether the bell changed since the last look (one open)."""
        try:
            data, _ = read_bytes(self.layout.bell(self.queue), limit=4096)
        except (OSError, ValueError):
            data = b""
        rang = self._bell is not None and data != self._bell
        self._bell = data
        return rang


def iter_tickets(layout: Layout, queue: str) -> Iterator[Tuple[str, str]]:
    """Every ticket of ``queue`` as ``(path, name)``, front first (a full listing: for
    cancelling, counting and fsck, never for claiming)."""
    qdir = layout.queue_dir(queue)
    for bucket in sorted(n for n in listdir(qdir) if is_bucket(n)):
        for name in sorted(n for n in listdir(os.path.join(qdir, bucket)) if is_ticket(n)):
            yield os.path.join(qdir, bucket, name), name


def in_process_queue(n: int) -> str:
    """The queue of this process's ``n``-th in-process handler: ``inproc-<host>-<pid>-<n>``."""
    return "inproc-{}-{}-{}".format(host_label(), os.getpid(), n)


def in_process_queue_gone(queue: Any) -> bool:
    """Whether ``queue`` is the in-process queue of a process of this host that has ended:
    nothing will ever run the jobs in it (another host's cannot be told: False)."""
    if not isinstance(queue, str) or not queue.startswith("inproc-"):
        return False
    host, pid = host_and_pid(queue[len("inproc-"):])
    return host == host_label() and pid is not None and not psutil.pid_exists(pid)


def queue_names(layout: Layout) -> List[str]:
    names = []
    for n in listdir(layout.queues):
        try:
            names.append(check_queue_name(n))
        except ValueError:
            continue
    return sorted(names)


def count_tickets(layout: Layout, queue: str, cap: Optional[int] = None) -> int:
    """How many tickets ``queue`` holds, counting no further than ``cap``."""
    n = 0
    for _ in iter_tickets(layout, queue):
        n += 1
        if cap is not None and n >= cap:
            break
    return n


def remove_empty_queue(layout: Layout, queue: str) -> None:
    """Remove a queue directory that has no buckets left (a process's private queue at exit)."""
    qdir = layout.queue_dir(queue)
    for name in listdir(qdir):
        if is_bucket(name):
            try:
                os.rmdir(os.path.join(qdir, name))
            except OSError:
                return
    remove_quietly(layout.bell(queue))
    try:
        os.rmdir(qdir)
    except OSError:
        pass


"""Heartbeats and leases: how workers show they are alive, and how a lost worker's
jobs are taken back.

A worker rewrites ``workers/<id>/heartbeat.json`` every few seconds with a
counter, ``beat``, that grows by one each time. Observers judge it on their
own clock: it is lost when its counter has not moved for ``lease`` seconds of
the observer's time. No timestamp is ever compared across nodes (their
clocks disagree), and a worker that is stopped (``SIGSTOP``, ``scontrol
suspend``) or whose node hangs is lost exactly like a dead one. On the same
host - same host name *and* same pid namespace, since two nodes may share a
name or a kernel - a dead pid, or a pid now used by another process, means
lost at once.

:class:`LeaseJudge` holds that rule and nothing else (the clock and the host
are parameters, so it is tested with a fake clock); :class:`Recovery` applies
it to the claims in ``running/`` and hands the jobs of lost workers back
through :func:`hither_fs.protocol.requeue`.
"""

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import psutil

from . import protocol
from .protocol import Token
from .root import Root, now_iso
from .runtime.files import HOST, CorruptFileError, listdir, read_json, remove_quietly, with_parents, write_json
from .runtime.layout import host_and_pid, host_label, is_worker_id

log = logging.getLogger("hither_fs.lease")

DEFAULT_LEASE = 30.0


@dataclass(frozen=True)
class Host:
    """Who may judge a process by its pid: the same host name in the same pid namespace."""

    name: str
    pidns: str

    @classmethod
    def this(cls) -> "Host":
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        return cls(HOST, pidns)


def id_host_pid(worker_id: str) -> Tuple[Optional[str], Optional[int]]:
    """The host label and pid in a worker's or taker's id, ``<kind>-<host>-<pid>-<tag>``."""
    return host_and_pid(worker_id.partition("-")[2])


def pid_alive(pid: int, create_time: Optional[float]) -> bool:
    """Whether ``pid`` is the process that was started at ``create_time``."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    # a tolerance: create times are derived from the boot time, which moves with clock steps
    return create_time is None or abs(started - create_time) < 1.0


class Heartbeat:
    """The file ``workers/<id>/heartbeat.json`` that tells others this worker is alive."""

    def __init__(self, root: Root, worker_id: str, info: Dict[str, Any], host: Optional[Host] = None):
        host = host or Host.this()
        self.root = root
        self.path = root.layout.heartbeat(worker_id)
        self.info = dict(info, id=worker_id, host=host.name, pidns=host.pidns, pid=os.getpid(),
                         create_time=psutil.Process().create_time(), started=now_iso())
        self.beat_count = 0

    def beat(self, **fields: Any) -> None:
        self.beat_count += 1
        self.info.update(fields, beat=self.beat_count, last_beat=now_iso())
        # the directory comes back if recovery removed it while this worker was stopped
        with_parents(lambda: write_json(self.path, self.info), os.path.dirname(self.path))

    def remove(self) -> None:
        """Remove the heartbeat and every request left for this worker."""
        remove_worker_dir(self.root, self.info["id"])


def remove_worker_dir(root: Root, worker_id: str) -> None:
    """Remove a worker's directory: its heartbeat and the requests left for it."""
    directory = root.layout.worker_dir(worker_id)
    for name in listdir(directory):
        remove_quietly(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def read_heartbeat(root: Root, worker_id: str) -> Optional[Dict[str, Any]]:
    try:
        hb = read_json(root.layout.heartbeat(worker_id), None, missing_ok=True)
    except (CorruptFileError, OSError, ValueError):
        return None
    return hb if isinstance(hb, dict) else None


class LeaseJudge:
    """Decides when a worker is lost, from what an observer sees of its heartbeat.

    ``clock`` is the observer's monotonic clock; ``host`` the observer's host.
    ``lost(worker_id, heartbeat)`` is called with the heartbeat as read now
    (None if there is no heartbeat file) and returns why the worker is lost,
    or None.
    """

    def __init__(self, lease: float = DEFAULT_LEASE, host: Optional[Host] = None,
                 clock: Callable[[], float] = time.monotonic,
                 alive: Callable[[int, Optional[float]], bool] = pid_alive):
        self.lease = lease
        self.host = host or Host.this()
        self.clock = clock
        self.alive = alive
        self._seen: Dict[str, Tuple[Any, float]] = {}  # worker id -> (beat, observer time it was first seen)
        self._taken: Dict[str, Tuple[Any, float]] = {}  # taken token's path -> (its taker's beat, first seen)

    def _dead(self, worker_id: str, heartbeat: Optional[Dict[str, Any]]) -> Optional[str]:
        """Why a process on this host is dead, judged by its pid; None if not known so."""
        if heartbeat and heartbeat.get("host") == self.host.name and heartbeat.get("pidns", "") == self.host.pidns:
            pid = heartbeat.get("pid")
            if isinstance(pid, int) and not self.alive(pid, heartbeat.get("create_time")):
                return "worker {} (pid {} on {}) is dead".format(worker_id, pid, self.host.name)
        elif heartbeat is None:
            # no heartbeat (a process that takes tokens without being a worker, or a worker
            # gone before its first beat): its id says its host and pid. A wrong verdict here
            # could only cost a re-run, never a second result: the fence decides that.
            host, pid = id_host_pid(worker_id)
            if host == host_label(self.host.name) and pid is not None and not self.alive(pid, None):
                return "{} (pid {} on {}) is dead".format(worker_id, pid, self.host.name)
        return None

    def lost(self, worker_id: str, heartbeat: Optional[Dict[str, Any]]) -> Optional[str]:
        """Why the worker is lost, or None."""
        silent = self._still(self._seen, worker_id, heartbeat)
        if silent is None:
            return self._dead(worker_id, heartbeat)
        what = "heartbeat stopped" if heartbeat else "no heartbeat file"
        return self._dead(worker_id, heartbeat) or "worker {}: {} for {:.0f} s".format(worker_id, what, silent)

    def lost_taken(self, taker_id: str, heartbeat: Optional[Dict[str, Any]], path: str) -> Optional[str]:
        """Whether the process that took a token (lying at ``path``) is lost: dead by its
        pid, or the token has lain there for a lease while its taker did not beat. Each
        taken token is judged on its own: a process without a heartbeat (a submitter)
        takes tokens for an instant, now and then, and only one that stays counts."""
        silent = self._still(self._taken, path, heartbeat)
        if silent is None:
            return self._dead(taker_id, heartbeat)
        return self._dead(taker_id, heartbeat) or "{} took a job's token {:.0f} s ago and {}".format(
            taker_id, silent, "stopped beating" if heartbeat else "has not put it down since")

    def _still(self, seen: Dict[str, Tuple[Any, float]], key: str, heartbeat: Optional[Dict[str, Any]]):
        """Seconds (on this observer's clock) that ``key``'s beat has stood still, if that
        is a lease or more; None otherwise. The first sighting starts the count."""
        now = self.clock()
        beat = heartbeat.get("beat") if heartbeat else None
        first = seen.get(key)
        if first is None or first[0] != beat:
            seen[key] = (beat, now)
            return None
        return now - first[1] if now - first[1] >= self.lease_of(heartbeat) else None

    def lease_of(self, heartbeat: Optional[Dict[str, Any]]) -> float:
        """This observer's lease, or the longer one the worker asked for in its heartbeat
        (``--lease``: where suspensions are long and normal, every observer must wait them out)."""
        asked = heartbeat.get("lease") if heartbeat else None
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and self.lease < asked < math.inf:
            return float(asked)
        return self.lease

    def forget(self, worker_id: str) -> None:
        self._seen.pop(worker_id, None)

    def keep_only(self, worker_ids: Set[str], taken_paths: Set[str]) -> None:
        """Forget what was seen of workers and taken tokens that are gone."""
        for w in [w for w in self._seen if w not in worker_ids]:
            del self._seen[w]
        for p in [p for p in self._taken if p not in taken_paths]:
            del self._taken[p]


class Recovery:
    """Hands back the jobs of lost workers.

    Each :meth:`run` lists ``running/`` once, then reads the heartbeats of at
    most ``per_round`` workers that hold claims (in turns, so that with many
    workers each one is still looked at every few rounds), and every
    ``sweep_every`` rounds also those of workers that hold none, to remove
    the heartbeat directories of dead idle workers.
    """

    def __init__(self, root: Root, judge: LeaseJudge, me: Optional[str] = None, per_round: int = 8,
                 sweep_every: int = 20):
        self.root = root
        self.judge = judge
        self.me = me
        self.per_round = per_round
        self.sweep_every = sweep_every
        self._cursor = 0
        self._rounds = 0

    def run(self, claims: Optional[List[Tuple[Token, str]]] = None,
            taken: Optional[List[Tuple[str, Token, str]]] = None) -> int:
        """One round; returns how many jobs were moved on. ``claims`` and ``taken`` are
        a fresh listing of ``running/`` (:func:`hither_fs.protocol.scan_running`) if the
        caller has one."""
        if claims is None or taken is None:
            claims, taken = protocol.scan_running(self.root)
        by_worker: Dict[str, List[Tuple[Token, str]]] = {}
        for token, path in claims:
            if token.worker != self.me:
                by_worker.setdefault(token.worker, []).append((token, path))
        self._rounds += 1
        workers = sorted(by_worker)
        sweep = self._rounds % self.sweep_every == 0
        if sweep:
            idle = sorted(w for w in listdir(self.root.layout.workers)
                          if is_worker_id(w) and w not in by_worker and w != self.me)
            self.judge.keep_only(set(workers) | set(idle), {path for _, _, path in taken})
            workers += idle
        if len(workers) > self.per_round:
            start = self._cursor % len(workers)
            workers = (workers[start:] + workers[:start])[:self.per_round]
            self._cursor += self.per_round
        moved = 0
        for worker_id in workers:
            why = self.judge.lost(worker_id, read_heartbeat(self.root, worker_id))
            if why is None:
                continue
            for token, path in by_worker.get(worker_id, []):
                moved += self._hand_back(token, path, why)
            self.judge.forget(worker_id)
            remove_worker_dir(self.root, worker_id)
        # tokens taken by a process that has not yet written the next state: normally
        # there for an instant; one that stays is judged with its taker
        for taker_id, _, path in taken:
            if taker_id == self.me:
                continue
            why = self.judge.lost_taken(taker_id, read_heartbeat(self.root, taker_id), path)
            if why is None:
                continue
            try:
                status = protocol.recover_taken(self.root, path, why + " (it was recording a job's next state)")
            except (OSError, CorruptFileError, protocol.JobGoneError) as exc:
                log.warning("could not recover %s: %s", path, exc)
                continue
            if status is not None:
                log.warning("recovered %s (%s): %s", path, status, why)
                moved += 1
        return moved

    def _hand_back(self, token: Token, path: str, why: str) -> int:
        cancel = os.path.lexists(self.root.layout.cancel_request(token.worker, token.job_id))
        try:
            status = protocol.requeue(self.root, token, path, why, counted=True, cancel_requested=cancel)
        except protocol.JobGoneError:
            remove_quietly(path)
            return 0
        except (OSError, CorruptFileError) as exc:
            log.warning("could not hand back job %s: %s", token.job_id, exc)
            return 0
        if status == protocol.Status.QUEUED:
            log.warning("job %s: its worker %s was lost (%s); queued again to run once more (attempt %d)",
                        token.job_id, token.worker, why, token.attempt + 1)
        elif status is not None:
            log.warning("job %s: its worker %s was lost (%s); the job is now %s", token.job_id, token.worker,
                        why, status.value)
        return status is not None


"""Named compute resources: jobs addressed to a resource, served only by it.

``hi.RemoteJobHandler(compute_resource_id='lab-cluster')`` puts jobs in the
root's queue ``resource-lab-cluster``. A ``hi.ComputeResource`` with that id,
running on any machine that sees the root (a login node, a workstation),
hands them to its own job handler - local workers or Slurm allocations - and
can answer them from its own job cache. The root is the only channel, as
with every other handler; there is no server to connect to.
"""

import logging
import os
import threading
import time
from typing import Dict, Optional

import filelock

from . import queue
from .cache import JobCache
from .handlers import JobHandler
from .root import FINISHED, QUEUED, Root, now_iso
from .runtime.code import stop_if_loading_script
from .runtime.files import remove_quietly
from .runtime.layout import check_queue_name

log = logging.getLogger("hither_fs.compute_resource")


def resource_queue(compute_resource_id: str) -> str:
    return check_queue_name("resource-" + compute_resource_id)


class RemoteJobHandler(JobHandler):
    """Send jobs to the compute resource ``compute_resource_id``."""

    def __init__(self, compute_resource_id: str):
        stop_if_loading_script("hi.RemoteJobHandler()")
        self.compute_resource_id = compute_resource_id
        self.queue_name = resource_queue(compute_resource_id)

    def queue_for(self, root: Root) -> str:
        return self.queue_name

    def __repr__(self):
        return "RemoteJobHandler(compute_resource_id={!r})".format(self.compute_resource_id)


class ComputeResource:
    """Serve the jobs sent to ``compute_resource_id`` with ``job_handler``.

    ``clear()`` cancels the jobs still waiting for this resource (left from an
    earlier session); ``run()`` serves until interrupted.
    """

    def __init__(self, compute_resource_id: str, job_handler: JobHandler,
                 job_cache: Optional[JobCache] = None, root: Optional[str] = None):
        stop_if_loading_script("hi.ComputeResource()")
        if job_handler is None or job_handler.in_process:
            raise ValueError("a compute resource needs a handler with workers "
                             "(ParallelJobHandler or SlurmJobHandler), not {!r}".format(job_handler))
        self.compute_resource_id = compute_resource_id
        self.queue_name = resource_queue(compute_resource_id)
        self.job_handler = job_handler
        self.job_cache = job_cache
        self.root = Root.get(root)
        self._forwarded: Dict[str, str] = {}  # job id -> cache key, for jobs to remember
        self._stop = threading.Event()

    def clear(self) -> int:
        """Cancel every job queued for this resource; return how many."""
        count = 0
        for ticket in queue.queue_tickets(self.root, self.queue_name):
            job_id = ticket.rsplit("-", 1)[-1]
            if queue.cancel(self.root, job_id) == "cancelled":
                count += 1
        return count

    def run(self, *, poll: float = 0.05, duration: Optional[float] = None) -> None:
        """Serve jobs until interrupted, ``stop()`` is called, or ``duration`` seconds pass."""
        end = None if duration is None else time.monotonic() + duration
        log.info("compute resource %r serving queue %s in %s", self.compute_resource_id, self.queue_name,
                 self.root.path)
        self._stop.clear()
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            moved = self.serve_once()
            self._stop.wait(0.001 if moved else poll)

    def stop(self) -> None:
        """Make ``run()`` return (from another thread)."""
        self._stop.set()

    def serve_once(self) -> int:
        """Forward what is queued for this resource; record finished jobs in the cache."""
        queue.promote_pending(self.root)
        moved = 0
        for ticket in queue.queue_tickets(self.root, self.queue_name):
            job_id = ticket.rsplit("-", 1)[-1]
            try:
                if self._answer_from_cache(job_id, ticket) or self._forward(job_id, ticket):
                    moved += 1
            except FileNotFoundError:
                continue  # being written by its submitter
            except Exception as exc:  # a damaged record fails its own job, never the resource
                log.warning("compute resource %r: job %s: %s", self.compute_resource_id, job_id, exc)
                queue.fail_damaged(self.root, job_id, "forwarding to a compute resource", exc)
        if moved:
            self.job_handler.submitted(self.root, None)
        else:
            self.job_handler.help(self.root)
        self._remember_finished()
        return moved

    def _ticket_path(self, ticket: str) -> str:
        return os.path.join(self.root.layout.queue_dir(self.queue_name), ticket)

    def _answer_from_cache(self, job_id: str, ticket: str) -> bool:
        if self.job_cache is None:
            return False
        spec = self.root.read_spec(job_id)
        entry = self.job_cache.lookup(self.root, spec["key"])
        if not entry or "value" not in entry:
            return False
        try:
            with self.root.lock(job_id, timeout=0):
                state = self.root.read_state(job_id)
                if state["status"] != QUEUED:
                    return False
                queue.write_record(self.root, job_id, "result.json", {"value": entry["value"]})
                state.update(status=FINISHED, finished=now_iso(), cached=True,
                             served_by=self.compute_resource_id)
                self.root.write_state(job_id, state)
                remove_quietly(self._ticket_path(ticket))
                return True
        except filelock.Timeout:
            return False

    def _forward(self, job_id: str, ticket: str) -> bool:
        """Move a job from the resource's queue to the queue of its handler."""
        target = self.job_handler.queue_for(self.root)
        try:
            with self.root.lock(job_id, timeout=0):
                state = self.root.read_state(job_id)
                if state["status"] != QUEUED or state["queue"] != self.queue_name:
                    remove_quietly(self._ticket_path(ticket))
                    return False
                queue.add_ticket(self.root, target, job_id)  # the new index entry before the state
                state.update(queue=target, served_by=self.compute_resource_id)
                self.root.write_state(job_id, state)
                remove_quietly(self._ticket_path(ticket))
        except filelock.Timeout:
            return False
        if self.job_cache is not None:
            self._forwarded[job_id] = self.root.read_spec(job_id)["key"]
        return True

    def _remember_finished(self) -> None:
        for job_id, key in list(self._forwarded.items()):
            state = self.root.read_job_file(job_id, "state.json", {}) or {}
            if state.get("status") == FINISHED:
                self.job_cache.record(self.root, key, self.root.read_spec(job_id),
                                      self.root.read_job_file(job_id, "result.json"), is_error=False)
            if state.get("status") in ("finished", "error", "cancelled"):
                del self._forwarded[job_id]

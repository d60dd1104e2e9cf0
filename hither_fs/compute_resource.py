"""Named compute resources: jobs addressed to a resource, served only by it.

``hi.RemoteJobHandler(compute_resource_id='lab-cluster')`` puts jobs in the
root's queue ``resource-lab-cluster``. A ``hi.ComputeResource`` with that id,
running on any machine that sees the root (a login node, a workstation),
hands them to its own job handler - local workers or Slurm allocations - and
can answer them from its own job cache. The root is the only channel, as
with every other handler; there is no server to connect to.
"""

import logging
import threading
import time
from typing import Any, Dict, Optional

from . import protocol
from .cache import JobCache
from .compat import SERVER_KEYWORDS, NoServerError, refuse_keywords
from .handlers import JobHandler
from .protocol import Status, Token
from .queue import iter_tickets, ticket_token
from .root import Root
from .runtime.code import stop_if_loading_script
from .runtime.files import CorruptFileError
from .runtime.layout import check_queue_name

log = logging.getLogger("hither_fs.compute_resource")


def resource_queue(compute_resource_id: str) -> str:
    return check_queue_name("resource-" + compute_resource_id)


def _check_resource_id(compute_resource_id: Any, where: str) -> None:
    """A missing id, or a kachery-p2p feed URI where an id belongs (hither 0.3 and 0.4 named
    resources by feed), is refused with what to give instead."""
    if compute_resource_id is None:
        raise TypeError("{}() needs compute_resource_id='ID': the name of the compute resource, served by "
                        "hi.ComputeResource(compute_resource_id='ID', job_handler=...).run() on a machine that sees "
                        "the root".format(where))
    if isinstance(compute_resource_id, str) and "://" in compute_resource_id:
        problem, instead = SERVER_KEYWORDS["compute_resource_uri"]
        raise NoServerError("{}({!r}): {}. Instead: {}".format(where, compute_resource_id, problem, instead))
    if not isinstance(compute_resource_id, str):
        raise TypeError("{}: compute_resource_id must be a string, not {!r}".format(where, compute_resource_id))


class RemoteJobHandler(JobHandler):
    """Send jobs to the compute resource ``compute_resource_id``.

    hither's server keywords (``database=``, ``event_stream_client=``,
    ``compute_resource_uri=``, ``uri=``) and kachery feed URIs are refused,
    naming the replacement: a compute resource id, reached through the root.
    """

    def __init__(self, compute_resource_id: Optional[str] = None, **hither_options: Any):
        if hither_options:
            refuse_keywords("hi.RemoteJobHandler", hither_options)
        _check_resource_id(compute_resource_id, "hi.RemoteJobHandler")
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

    def __init__(self, compute_resource_id: Optional[str] = None, job_handler: Optional[JobHandler] = None,
                 job_cache: Optional[JobCache] = None, root: Optional[str] = None, **hither_options: Any):
        stop_if_loading_script("hi.ComputeResource()")
        if hither_options:  # hither's database=, kachery=, compute_resource_uri=, ...: refused, saying instead what
            refuse_keywords("hi.ComputeResource", hither_options)
        _check_resource_id(compute_resource_id, "hi.ComputeResource")
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
        for path, name in list(iter_tickets(self.root.layout, self.queue_name)):
            token = Token.parse(ticket_token(name))
            if token is not None and protocol.fail(self.root, path, token.job_id, protocol.cancelled_record(
                    token.job_id, "before it ran (its compute resource was cleared)"), Status.CANCELLED):
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
        moved = 0
        target = self.job_handler.queue_for(self.root)
        for path, name in list(iter_tickets(self.root.layout, self.queue_name)):
            token = Token.parse(ticket_token(name))
            if token is None:
                continue  # a stray file: not a ticket
            try:
                if self._answer_from_cache(path, token.job_id) or self._forward(path, token.job_id, target):
                    moved += 1
            except FileNotFoundError:
                continue  # gone meanwhile
            except Exception as exc:  # a damaged record fails its own job, never the resource
                log.warning("compute resource %r: job %s: %s", self.compute_resource_id, token.job_id, exc)
                protocol.fail(self.root, path, token.job_id, protocol.error_record(
                    type(exc).__name__, str(exc), "forwarding to a compute resource", module=type(exc).__module__))
        try:
            if moved:
                self.job_handler.submitted(self.root, None)
            else:
                self.job_handler.help(self.root)
        except Exception as exc:  # sbatch refusing, local workers failing: its jobs fail, the resource serves on
            log.warning("compute resource %r: %s", self.compute_resource_id, exc)
        self._remember_finished()
        return moved

    def _answer_from_cache(self, path: str, job_id: str) -> bool:
        if self.job_cache is None:
            return False
        spec = protocol.read_spec(self.root, job_id)
        entry = self.job_cache.lookup(self.root, spec["key"])
        if not entry or "value" not in entry:
            return False
        return protocol.finish_from_cache(self.root, path, job_id, {"value": entry["value"]},
                                          served_by=self.compute_resource_id)

    def _forward(self, path: str, job_id: str, target: str) -> bool:
        """Move a job from the resource's queue to the queue of its handler (or fail it, when
        Slurm refused that queue's allocations for good)."""
        refused = getattr(self.job_handler, "refused", {}).get(target)
        if refused:
            return protocol.fail(self.root, path, job_id, protocol.error_record(
                "SlurmError", refused, "forwarding to a compute resource", module="hither_fs.slurm"))
        if not protocol.forward(self.root, path, target, served_by=self.compute_resource_id):
            return False
        if self.job_cache is not None:
            self._forwarded[job_id] = protocol.read_spec(self.root, job_id)["key"]
        return True

    def _remember_finished(self) -> None:
        for job_id, key in list(self._forwarded.items()):
            try:
                state = protocol.read_state(self.root, job_id)
            except (OSError, CorruptFileError):
                continue
            if state.get("status") == Status.FINISHED:
                self.job_cache.record(self.root, key, protocol.read_spec(self.root, job_id), state["result"],
                                      is_error=False)
            if state.get("status") in protocol.FINAL_VALUES:
                del self._forwarded[job_id]

"""Running one claimed job: in a worker's warm runner or a forked child (see
:mod:`hither_fs.runners`), or in this process (the in-process handler).

A run works in a *scratch directory* on the node's own disk
(``$TMPDIR/hither_fs-<uid>/<worker>/<job>.<gen>/``): the child's stdout and
stderr go there, and so does its ``outcome.json``. Nothing of a run touches
the shared root until it has something to say - a no-op job costs the root
no metadata operation at all while it runs. Console output is copied into a
hidden live file in the job's directory as it grows (:class:`Console`), so
``hither-fs logs`` shows it from any node while the job runs; the commit
renames it to ``stdout.txt``/``stderr.txt``.

The worker measures a run's wall time; its CPU time and peak memory come from
the runner's answer, or from ``os.wait4`` for a forked child.
"""

import contextlib
import functools
import logging
import os
import pwd
import resource
import shutil
import stat
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

from . import protocol
from .cache import record_outcome
from .containers import run_container_attempt
from .docker import kill_container
from .protocol import Claim, Outcome, error_record
from .root import Root, iso_at
from .runners import RunnerPool, Runner, become_job_process, kill_tree
from .runtime.code import preload
from .runtime.execute import OUTCOME, redirect_console, run_attempt
from .runtime.files import HOST, CorruptFileError, file_mode, listdir, read_json, remove_quietly, temp_name
from .runtime.layout import host_and_pid, host_label, live_console_prefix

CONSOLE = ("stdout", "stderr")
#: Seconds beyond its ``job_timeout`` that a container job may take to get its image and code.
CONTAINER_READY_ALLOWANCE = 3600.0
log = logging.getLogger("hither_fs.worker")


def scratch_base() -> str:
    """This user's scratch directory on the node's own disk: made private, and refused if
    it is someone else's, a symbolic link, or writable by others (another user of the
    node could otherwise read or replace what jobs leave there)."""
    base = os.path.join(tempfile.gettempdir(), "hither_fs-{}".format(os.getuid()))
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(base, 0o700)  # ours, made with looser bits (an older hither_fs): made private
        st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError("refusing the scratch directory {}: it must be a directory of this user's that "
                              "nobody else can use (it is {}, owner uid {}, mode {:o})".format(
                                  base, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "there", st.st_uid,
                                  stat.S_IMODE(st.st_mode)))
    return base


def scratch_root(worker_id: str) -> str:
    """This worker's scratch directory on the node's own disk."""
    return os.path.join(tempfile.gettempdir(), "hither_fs-{}".format(os.getuid()), worker_id)


def remove_dead_scratch() -> List[str]:
    """Remove the scratch directories that workers of this node left when they were killed
    (their pid is gone). Returns them."""
    base = scratch_base()
    removed = []
    for name in os.listdir(base):
        host, pid = host_and_pid(name.partition("-")[2])  # worker ids: <kind>-<host>-<pid>-<tag>
        if host == host_label() and pid is not None and not psutil.pid_exists(pid):
            for attempt in listdir(os.path.join(base, name)):
                kill_container(os.path.join(base, name, attempt))  # a Docker container outlives its client
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed.append(os.path.join(base, name))
    return removed


def slurm_facts() -> Dict[str, Any]:
    """The Slurm job id and node this process runs in, if it runs in an allocation."""
    return {key: os.environ[var] for var, key in (("SLURM_JOB_ID", "slurm_job_id"), ("SLURMD_NODENAME", "slurm_node"))
            if os.environ.get(var)}


@functools.lru_cache(maxsize=None)
def _user_name() -> str:
    """This process's user, from the password database (``$USER`` can say anything)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def base_runtime(worker_id: str) -> Dict[str, Any]:
    return dict(slurm_facts(), host=HOST, worker=worker_id, python=sys.version.split()[0], user=_user_name(),
                uid=os.getuid())


class Console:
    """Copies a run's console files from scratch into hidden live files in the job's
    directory, creating each live file only when its stream first has output."""

    def __init__(self, root: Root, claim: Claim, scratch: str):
        self.job_dir = root.layout.job_dir(claim.job_id)
        self.scratch = scratch
        self.token = claim.token
        self.copied = {name: 0 for name in CONSOLE}
        self.live: Dict[str, Tuple[str, int]] = {}  # name -> (path, fd)

    def copy(self) -> None:
        """Copy what was written since the last call (a local ``fstat`` when nothing was)."""
        for name in CONSOLE:
            src = os.path.join(self.scratch, name + ".txt")
            try:
                size = os.stat(src).st_size
            except FileNotFoundError:
                continue
            if size <= self.copied[name]:
                continue
            if name not in self.live:
                base = live_console_prefix(name, self.token.gen, self.token.attempt)
                path = temp_name(os.path.join(self.job_dir, base[1:-1]))  # .stdout.txt.gNaM.tmp-host.pid.rand
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, file_mode(self.job_dir))
                self.live[name] = (path, fd)
            fd_out = self.live[name][1]
            with open(src, "rb") as f:
                f.seek(self.copied[name])
                while True:
                    chunk = f.read(min(max(size - self.copied[name], 1 << 16), 1 << 20))  # (allocated before it reads)
                    if not chunk:
                        break
                    os.write(fd_out, chunk)
                    self.copied[name] += len(chunk)

    def close(self) -> Dict[str, Tuple[str, int]]:
        """Copy the rest and close; returns ``{name: (live path, size)}`` for :class:`Outcome`."""
        with contextlib.suppress(OSError):
            self.copy()
        out = {}
        for name, (path, fd) in self.live.items():
            os.close(fd)
            out[name] = (path, self.copied[name])
        self.live.clear()
        return out

    def discard(self) -> None:
        for path, fd in self.live.values():
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.live.clear()


def _outcome_from(scratch: str) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]], Dict[str, Any]]:
    """(result, error, facts) that a run left in its scratch directory."""
    try:
        outcome = read_json(os.path.join(scratch, OUTCOME), None, missing_ok=True)
    except CorruptFileError:
        outcome = None
    try:
        facts = read_json(os.path.join(scratch, "runtime.json"), {}, missing_ok=True)
    except CorruptFileError:
        facts = {}
    return _outcome_parts(outcome) + (facts if isinstance(facts, dict) else {},)


def _outcome_parts(outcome: Any) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """(result, error) of an outcome (either may be None: a run that said nothing)."""
    if isinstance(outcome, dict) and isinstance(outcome.get("result"), dict):
        return outcome["result"], None
    if isinstance(outcome, dict) and isinstance(outcome.get("error"), dict):
        return None, outcome["error"]
    return None, None


class Attempt:
    """One run of a claimed job: in a warm runner of ``runners`` (a job without a
    container, when the worker has runners, unless its spec asks for a
    ``fresh_process``), else in a forked child of its own."""

    def __init__(self, root: Root, claim: Claim, worker_id: str, scratch_base: str,
                 runners: Optional[RunnerPool] = None):
        self.root = root
        self.claim = claim
        self.worker_id = worker_id
        self.scratch = os.path.join(scratch_base, "{}.{}".format(claim.job_id, claim.token.gen))
        self.console = Console(root, claim, self.scratch)
        self.runners = runners
        self.runner: Optional[Runner] = None
        self.runner_outcome: Optional[Dict[str, Any]] = None  # what the runner answered
        self.pid = -1
        self.started = time.time()
        self.started_mono = time.monotonic()
        #: set when the worker ends the run itself (timeout, cancel, refusal, lost claim)
        self.failure: Optional[Dict[str, Any]] = None
        #: the worker's checks of who may write the code (hither_fs.trust.CodeTrust), for the job's imports
        self.code_trust: Any = None
        self.lost = False
        self.commit_failed = 0.0  # when its first commit failed (a full disk, say)
        self._ready_mono: Optional[float] = None  # when a container job's image and code were ready

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    def over_time(self, timeout: float) -> Optional[str]:
        """Why this run is past its ``job_timeout``, or None. A container job's time starts
        once its image is pulled and its code unpacked (its ``runtime.json`` is written then):
        a pull cut short by every job's timeout would start again for each of them, and never
        end. Getting ready gets :data:`CONTAINER_READY_ALLOWANCE` seconds beyond the timeout."""
        now = time.monotonic()
        if not self.claim.spec.get("container"):
            return "ran longer than its job_timeout of {} s".format(timeout) \
                if now - self.started_mono > timeout else None
        if self._ready_mono is None and os.path.exists(os.path.join(self.scratch, "runtime.json")):
            self._ready_mono = now
        if self._ready_mono is not None:
            return "ran longer than its job_timeout of {} s (counted from when its container was ready)".format(
                timeout) if now - self._ready_mono > timeout else None
        if now - self.started_mono > timeout + CONTAINER_READY_ALLOWANCE:
            return "was not ready to run after {:.0f} s getting its container image and code".format(
                now - self.started_mono)
        return None

    def start(self) -> None:
        spec = self.claim.spec
        if self.runners is not None and not spec.get("container") and not spec.get("fresh_process"):
            self._start_in_runner(spec)
        else:
            self._start_forked(spec)
        self.started = time.time()
        self.started_mono = time.monotonic()

    def _start_in_runner(self, spec: Dict[str, Any]) -> None:
        self.runner = self.runners.acquire(spec)
        self.pid = self.runner.pid
        self.scratch = self.runner.scratch
        for name in CONSOLE:  # new files for each job: whatever the last job left writing
            remove_quietly(os.path.join(self.scratch, name + ".txt"))  # writes to the old ones
        self.console = Console(self.root, self.claim, self.scratch)
        try:
            self.runner.send(self.job_id, spec)
        except OSError:
            self.runners.release(self.runner, {"retire": "its pipe broke"})
            raise

    def _start_forked(self, spec: Dict[str, Any]) -> None:
        if not spec.get("container"):
            try:  # read and compiled once per worker; every job process forked after inherits it
                preload(spec["function"], self.root.store)
            except Exception:
                pass  # the job's own process meets it again, and fails the job with it
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(self.scratch, mode=0o700)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        close_fds = self.runners.fds() if self.runners is not None else []
        pid = os.fork()
        if pid == 0:  # the job process
            code = 3
            try:
                become_job_process(parent, close_fds)
                redirect_console(self.scratch, truncate=True)
                os.environ["HITHER_FS_JOB_ID"] = self.job_id
                if self.code_trust is not None and not spec.get("container"):
                    self.code_trust.guard_imports(spec)  # what the job adds to sys.path is checked too
                if spec.get("container"):
                    ok = run_container_attempt(self.root.path, self.job_id, spec, self.scratch)
                else:
                    ok = run_attempt(self.root.path, self.job_id, self.scratch, spec=spec)
                code = 0 if ok else 1
            finally:
                os._exit(code)
        self.pid = pid

    def kill(self, failure: Optional[Dict[str, Any]] = None) -> None:
        if failure is not None and self.failure is None:
            self.failure = failure
        if self.runner is not None:
            self.runner.doomed = True  # even if it answered already: it is never given another job
        if self.pid > 0:
            kill_tree(self.pid)  # a runner goes with its job: the next job gets a fresh one
            if self.claim.spec.get("container"):
                kill_container(self.scratch)  # a Docker container outlives its killed client

    def poll(self, block: bool = False) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(wait status, measures)`` once the run has ended, else None. The measures
        are the job's ``cpu_seconds`` and ``peak_memory_bytes`` where known."""
        if self.pid < 0:
            return 0, {}
        if self.runner is not None:
            ended = self.runner.answer(block)
            if ended is None:
                return None
            status, answer = ended
            self.runner_outcome = answer.get("outcome")
            with contextlib.suppress(OSError):
                self.console.copy()  # now: a runner that goes takes its directory with it
            self.runners.release(self.runner, answer)
            if answer.get("retire"):
                log.info("job %s: its runner (pid %d) retires: %s", self.job_id, self.pid, answer["retire"])
            return status, {k: answer[k] for k in ("cpu_seconds", "peak_memory_bytes") if k in answer}
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 0, {}
        if pid == 0:
            return None
        return status, {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 6),
                        "peak_memory_bytes": usage.ru_maxrss * 1024}  # Linux reports KiB

    def outcome(self, status: int, measures: Dict[str, Any], stopping: bool = False) -> Outcome:
        """What the run amounts to, for :func:`hither_fs.protocol.commit`."""
        end = time.time()
        runtime: Dict[str, Any] = {"pid": self.pid, "start": iso_at(self.started), "end": iso_at(end),
                                   "wall_seconds": round(end - self.started, 6), "attempt": self.claim.token.attempt}
        runtime.update(measures)
        if self.runner is not None:
            runtime["runner_job"] = self.runner.jobs_run  # 1 for the first job of a fresh runner
        if os.WIFEXITED(status):
            runtime["exit_code"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            runtime["killed_by_signal"] = os.WTERMSIG(status)
        if self.runner is not None:
            (result, error), facts = _outcome_parts(self.runner_outcome), {}
        else:
            result, error, facts = _outcome_from(self.scratch) if self.pid > 0 else (None, None, {})
        runtime = dict(facts, **runtime)
        runtime.update(base_runtime(self.worker_id))
        if self.failure is not None:
            result, error = None, self.failure
        elif result is None and error is None:
            if os.WIFSIGNALED(status):
                error = error_record("JobProcessError", "the job process was killed by signal {}".format(
                    os.WTERMSIG(status)), "running")
            else:
                error = error_record("JobProcessError", "the job ended without writing a result", "running")
        return Outcome(result=result, error=error, runtime=runtime, console=self.console.close())

    def cleanup(self) -> None:
        if self.runner is None:  # a runner's directory serves its next job
            shutil.rmtree(self.scratch, ignore_errors=True)


class Slots:
    """The runs of one worker: started on claimed jobs, watched (timeouts, console output),
    and committed when they end - or committed again later, when the root could not take
    the commit (a full disk), or handed back when the worker must go.

    ``tick`` is called now and then during a long commit (many jobs waiting on one), so
    the worker can keep beating; ``promoted`` after a commit that queued (or failed)
    jobs that waited for the committed one, with their number.
    """

    def __init__(self, root: Root, worker_id: str, scratch: str, tick: Callable[[], None], code_trust: Any = None,
                 runners: Optional[RunnerPool] = None, promoted: Optional[Callable[[int], None]] = None):
        self.root = root
        self.code_trust = code_trust
        self.runners = runners
        self.worker_id = worker_id
        self.scratch = scratch
        self.tick = tick
        self.promoted = promoted
        self.running: Dict[str, Attempt] = {}                 # job id -> its run
        self.uncommitted: List[Tuple[Attempt, Outcome]] = []  # runs whose commit failed: retried
        self.jobs_done = 0

    def __len__(self) -> int:
        return len(self.running)

    def used(self, resource: str) -> float:
        """How much of ``resource`` (``cpus``, ``memory_gb``) the running jobs asked for."""
        return sum((a.claim.spec.get("resources") or {}).get(resource) or 0 for a in self.running.values())

    def start(self, claim: Claim) -> bool:
        """Start a claimed job; if that fails (fork, scratch directory), give it back."""
        attempt = Attempt(self.root, claim, self.worker_id, self.scratch, self.runners)
        attempt.code_trust = self.code_trust
        try:
            attempt.start()
        except Exception as exc:
            log.exception("could not start job %s", claim.job_id)
            protocol.requeue(self.root, claim.token, claim.path, "its worker could not start it: {}".format(exc),
                             counted=False)
            return False
        self.running[claim.job_id] = attempt
        log.debug("job %s attempt %d started as pid %d", claim.job_id, claim.token.attempt, attempt.pid)
        return True

    def refuse(self, claim: Claim, error: Dict[str, Any]) -> None:
        """Fail a claimed job without running it (committed by the next reap)."""
        if claim.spec is None:
            claim.spec = {}
        attempt = Attempt(self.root, claim, self.worker_id, self.scratch)
        attempt.failure = error
        self.running[claim.job_id] = attempt

    def police(self) -> None:
        """Kill runs past their timeout; copy console output into the root."""
        for attempt in self.running.values():
            if attempt.pid < 0 or attempt.failure is not None:
                continue
            timeout = attempt.claim.spec.get("timeout")
            why = attempt.over_time(timeout) if timeout else None
            if why:
                attempt.kill(error_record("JobTimeoutError", "job {} {} and was killed".format(attempt.job_id, why),
                                          "running"))
                continue
            try:
                attempt.console.copy()
            except OSError as exc:
                log.warning("job %s: cannot copy its console output into the root: %s", attempt.job_id, exc)

    def reap(self, block: bool = False, stopping: bool = False) -> bool:
        """Commit the runs that ended; True if any did. ``stopping``: the worker is being
        stopped by a signal, so a job killed by one was killed along with it (``scancel``
        signals a whole allocation): that run is handed back, not failed."""
        done = False
        for job_id, attempt in list(self.running.items()):
            ended = attempt.poll(block)
            if ended is None:
                continue
            del self.running[job_id]
            done = True
            status, measures = ended
            if attempt.lost:
                attempt.console.discard()
                attempt.cleanup()
            elif attempt.failure is None and os.WIFSIGNALED(status) and stopping:
                attempt.console.discard()
                attempt.cleanup()
                protocol.requeue(self.root, attempt.claim.token, attempt.claim.path,
                                 "killed by signal {} while its worker was being stopped".format(
                                     os.WTERMSIG(status)), counted=True)
            else:
                self._commit(attempt, attempt.outcome(status, measures))
        return done

    def _commit(self, attempt: Attempt, outcome: Outcome, first: bool = True) -> bool:
        """Commit one run; False if the root could not take it (kept for a retry)."""
        try:
            final = protocol.commit(self.root, attempt.claim, outcome, tick=self.tick, promoted=self.promoted)
        except protocol.JobGoneError as exc:  # its token is dropped: nothing to retry
            log.warning("job %s: outcome not recorded: %s", attempt.job_id, exc)
            attempt.cleanup()
            return True
        except Exception:
            if first:  # (a full disk, say) the job stays ours: try again soon, never leave it stuck
                log.exception("could not commit job %s; will retry", attempt.job_id)
                attempt.commit_failed = time.monotonic()
            self.uncommitted.append((attempt, outcome))
            return False
        attempt.cleanup()
        if final is None:
            log.warning("job %s: its claim was taken back meanwhile; this run's outcome is discarded",
                        attempt.job_id)
            return True
        try:
            record_outcome(self.root, attempt.claim.spec, final, outcome.result, outcome.error)
        except Exception:
            log.exception("could not record job %s in its cache", attempt.job_id)
        self.jobs_done += 1
        log.info("job %s (%s) -> %s", attempt.job_id, attempt.claim.spec.get("function", {}).get("name"), final)
        return True

    def retry(self) -> None:
        """Commit again what could not be committed; after a minute of failures, hand the
        job back instead (this run's result is lost, not the job)."""
        for attempt, outcome in list(self.uncommitted):
            self.uncommitted.remove((attempt, outcome))
            if self._commit(attempt, outcome, first=False) or time.monotonic() - attempt.commit_failed < 60:
                continue
            self.uncommitted.remove((attempt, outcome))
            log.error("giving job %s back after a minute of failed commits", attempt.job_id)
            try:
                protocol.requeue(self.root, attempt.claim.token, attempt.claim.path,
                                 "its worker could not record the outcome")
                attempt.cleanup()
            except Exception:
                self.uncommitted.append((attempt, outcome))

    def hand_back_all(self, why: str, counted: bool) -> None:
        """Kill the running jobs and put them back in the queue for another worker (and
        the ones whose commit is still pending, uncounted)."""
        for attempt in self.running.values():
            attempt.kill()
        for job_id, attempt in list(self.running.items()):
            attempt.poll(block=True)
            attempt.console.discard()
            attempt.cleanup()
            if not attempt.lost:
                try:
                    protocol.requeue(self.root, attempt.claim.token, attempt.claim.path, why, counted=counted)
                except Exception:
                    log.exception("could not hand back job %s", job_id)
            del self.running[job_id]
        for attempt, _ in self.uncommitted:
            with contextlib.suppress(Exception):
                protocol.requeue(self.root, attempt.claim.token, attempt.claim.path,
                                 "its worker stopped before it could record the outcome", counted=False)
        self.uncommitted.clear()


# -- in this process ----------------------------------------------------------------

def run_in_process(root: Root, claim: Claim, worker_id: str, function: Optional[Callable],
                   beat: Callable[[], None]) -> Outcome:
    """Run a claimed job inside this process (``DefaultJobHandler``).

    Console output is copied to the scratch files while still reaching the
    terminal; ``beat`` is called every two seconds from a thread, so other
    processes do not take the job for lost while it runs.
    """
    scratch = os.path.join(scratch_root(worker_id), "{}.{}".format(claim.job_id, claim.token.gen))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch, mode=0o700)
    stop = threading.Event()

    def beating():
        while not stop.wait(2.0):
            beat()

    beater = threading.Thread(target=beating, daemon=True)
    beater.start()
    start, cpu0 = time.time(), time.process_time()
    console = Console(root, claim, scratch)
    try:
        with _console_file(scratch, "stdout.txt") as out, _console_file(scratch, "stderr.txt") as err:
            with contextlib.redirect_stdout(_Tee(sys.stdout, out)), contextlib.redirect_stderr(_Tee(sys.stderr, err)):
                if claim.spec.get("container"):
                    run_container_attempt(root.path, claim.job_id, claim.spec, scratch)
                else:
                    run_attempt(root.path, claim.job_id, scratch, spec=claim.spec, function=function)
        end = time.time()
        result, error, facts = _outcome_from(scratch)
        runtime = dict(facts, pid=os.getpid(), start=iso_at(start), end=iso_at(end), wall_seconds=round(end - start, 6),
                       cpu_seconds=round(time.process_time() - cpu0, 6), attempt=claim.token.attempt,
                       peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, in_process=True)
        runtime.update(base_runtime(worker_id))
        if result is None and error is None:
            error = error_record("JobProcessError", "the job ended without writing a result", "running")
        return Outcome(result=result, error=error, runtime=runtime, console=console.close())
    finally:
        stop.set()
        beater.join()
        shutil.rmtree(scratch, ignore_errors=True)


def _console_file(directory: str, name: str):
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w")


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

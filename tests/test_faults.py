"""Faults caused for real: killed workers, damaged files, a full disk, dead lock holders."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hither_fs as hi
from conftest import REPO, TESTS
from hither_fs.queue import iter_tickets
from hither_fs.runtime.files import CorruptFileError
from jobfuncs import add, chaos_square, echo, sleepy
from test_jobs import wait_for_file


class QueueOnly(hi.JobHandler):
    """A real handler that only names a queue; the test starts the workers itself."""

    def __init__(self, name):
        self.name = name

    def queue_for(self, root):
        return self.name


def start_worker(root, queue_name, *extra, preexec_fn=None, stderr=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.Popen([sys.executable, '-m', 'hither_fs', 'worker', '--root', root.path,
                             '--queue', queue_name, '--heartbeat', '0.5', '--log-level', 'warning'] + list(extra),
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn, stderr=stderr)


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_chaos_500_jobs_while_workers_are_killed(root):
    n = 500  # at least
    with hi.Config(job_handler=QueueOnly('chaos')):
        jobs = [chaos_square.run(i=i) for i in range(n)]
    workers = [start_worker(root, 'chaos') for _ in range(4)]
    rng = random.Random(1234)
    kills = 0
    try:
        next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
        deadline = time.monotonic() + 300
        # go on until every job is done and at least 3 workers were killed (a fast machine
        # may finish the jobs first; more jobs are then added, and must end right too)
        while not all(j.is_done() for j in jobs) or kills < 3:
            if all(j.is_done() for j in jobs[-50:]) and kills < 3:
                with hi.Config(job_handler=QueueOnly('chaos')):
                    jobs += [chaos_square.run(i=i) for i in range(len(jobs), len(jobs) + 100)]
            assert time.monotonic() < deadline, 'chaos run did not finish'
            if time.monotonic() >= next_kill:
                k = rng.randrange(len(workers))
                workers[k].send_signal(signal.SIGKILL)  # no warning, no cleanup
                workers[k].wait()
                kills += 1
                workers[k] = start_worker(root, 'chaos')  # the supervisor restarts it
                next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
            time.sleep(0.05)
    finally:
        stop(workers)
    n = len(jobs)
    results = [j.get_result() for j in jobs]
    assert results == [i * i for i in range(n)]
    attempts = [j.get_state()['attempt'] for j in jobs]
    reruns = sum(a - 1 for a in attempts)
    print('\nchaos: {} jobs, {} workers killed, {} jobs re-run ({} extra attempts)'.format(
        n, kills, sum(a > 1 for a in attempts), reruns))
    assert kills >= 3
    assert all(j.status == 'finished' for j in jobs)
    assert list(iter_tickets(root.layout, 'chaos')) == [] and os.listdir(os.path.join(root.path, 'running')) == []
    # a writer killed between write and rename leaves only a hidden temp file, which nothing
    # reads; hither-fs fsck --repair sweeps them
    temps = [os.path.join(dp, f) for dp, _, fs in os.walk(root.path) for f in fs if '.tmp-' in f]
    assert all(os.path.basename(t).startswith('.') for t in temps)
    from conftest import run_python
    fsck = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', 'fsck', '--repair')
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert [f for dp, _, fs in os.walk(root.path) for f in fs if '.tmp-' in f] == []


def test_worker_killed_mid_job_its_job_runs_elsewhere(root, tmp_path):
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=QueueOnly('q1')):
        job = sleepy.run(seconds=5, pid_file=pid_file, result='ok')
    first = start_worker(root, 'q1')
    try:
        wait_for_file(pid_file)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(root, 'q1')
        assert job.wait(timeout=60) == 'ok'
    finally:
        stop([first, second])
    state = job.get_state()
    assert state['attempt'] == 2 and 'dead' in state['history'][-1]['why']


def test_too_many_lost_workers_fail_the_job_clearly(root, tmp_path):
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=QueueOnly('q2'), max_attempts=2):
        job = sleepy.run(seconds=60, pid_file=pid_file)
    procs = []
    try:
        for _ in range(2):
            w = start_worker(root, 'q2')
            procs.append(w)
            wait_for_file(pid_file)
            os.unlink(pid_file)
            w.send_signal(signal.SIGKILL)
            w.wait()
        procs.append(start_worker(root, 'q2'))  # its lease check gives up on the job
        with pytest.raises(hi.WorkerLostError, match='worker lost 2 times'):
            job.wait(timeout=60)
    finally:
        stop(procs)


def test_damaged_spec_fails_the_job_and_the_worker_carries_on(root):
    with hi.Config(job_handler=QueueOnly('q3')):
        bad = add.run(x=1, y=2)
        good = add.run(x=2, y=2)
    with open(os.path.join(bad.directory, 'spec.json'), 'w') as f:
        f.write('{"function": {"na')  # truncated
    w = start_worker(root, 'q3')
    try:
        assert good.wait(timeout=60) == 4
        with pytest.raises(hi.JobError, match='spec.json: not valid JSON'):
            bad.wait(timeout=60)
        assert w.poll() is None  # the worker survived
    finally:
        stop([w])


def test_damaged_result_blob_is_reported_never_used(root, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = echo.run(x=np.arange(1000.0))
        job.wait(timeout=60)
    sha1 = job.get_state()['result']['value']['sha1']
    path = root.store.blob_path(sha1, '.npy')
    with open(path, 'r+b') as f:
        f.seek(200)
        f.write(b'garbage!')
    again = hi.get_job(job.id)
    with pytest.raises(CorruptFileError, match=path):
        again.get_result()
    # a downstream job fails with the same report instead of computing with bad data
    with hi.Config(job_handler=parallel(1)):
        down = add.run(x=again, y=1)
        with pytest.raises(hi.JobError, match='content hash is'):
            down.wait(timeout=60)


def test_full_disk_gives_a_clear_error_and_no_partial_files(root):
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB per file
    cache = hi.JobCache()
    with hi.Config(job_handler=QueueOnly('q4'), job_cache=cache):
        big = echo.run(x=np.zeros(4 << 20 // 8 * 8))  # the argument was stored by us: fine
    # the worker cannot write anything bigger than 1 MiB
    w = start_worker(root, 'q4', preexec_fn=small_files)
    try:
        with hi.Config(job_handler=QueueOnly('q4'), job_cache=cache):
            from jobfuncs import burn
            job = burn.run(seconds=0, megabytes=1)
        assert job.wait(timeout=60) == float(1024 * 1024 // 8)
        with pytest.raises(OSError, match='cannot write into the store .* disk full'):
            big.wait(timeout=60)
    finally:
        stop([w])
    assert cache.lookup(root, big.spec['key']) is None  # no cache entry for a result never written
    assert [f for dp, _, fs in os.walk(root.path) for f in fs if '.tmp-' in f] == []


def test_a_stopped_worker_blocks_nothing_and_discards_its_outcome_when_resumed(root, tmp_path):
    """SIGSTOP a worker in the middle of a job (as ``scontrol suspend`` does): the other
    worker goes on with the rest of the queue, takes the job back once the lease is over
    and runs it; the stopped worker, resumed, finds its claim gone and records nothing."""
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=QueueOnly('q5')):
        slow = sleepy.run(seconds=5, pid_file=pid_file, result='ran')
    first = start_worker(root, 'q5', '--lease', '2', stderr=subprocess.PIPE)
    second = None
    try:
        wait_for_file(pid_file)
        first.send_signal(signal.SIGSTOP)
        os.unlink(pid_file)
        second = start_worker(root, 'q5', '--lease', '2')
        with hi.Config(job_handler=QueueOnly('q5')):
            others = [add.run(x=i, y=1) for i in range(20)]
        assert [j.wait(timeout=60) for j in others] == list(range(1, 21))  # nothing waits for the stopped one
        assert slow.wait(timeout=60) == 'ran'
        state = slow.get_state()
        assert state['attempt'] == 2 and 'heartbeat stopped' in state['history'][-1]['why']
        assert state['worker'] != state['history'][-1]['worker']
        first.send_signal(signal.SIGCONT)  # its child finished long ago: it commits at once, and must lose
        said = ''
        while 'outcome is discarded' not in said:
            line = first.stderr.readline().decode()
            assert line, 'the resumed worker ended without saying it discarded its outcome: ' + said
            said += line
        assert slow.get_state() == state  # the record is the second run's, untouched
    finally:
        first.send_signal(signal.SIGCONT)
        stop([first] + ([second] if second else []))


def test_a_damaged_upstream_record_fails_only_its_own_pipeline(root):
    w = start_worker(root, 'q6')
    try:
        with hi.Config(job_handler=QueueOnly('q6')):
            up = add.run(x=1, y=1)
            assert up.wait(timeout=60) == 2
        with open(os.path.join(up.directory, 'state.json'), 'w') as f:
            f.write('{"status": "fin')  # damaged before a downstream job reads it
        with hi.Config(job_handler=QueueOnly('q6')):
            down = add.run(x=hi.get_job(up.id), y=1)
            other = add.run(x=5, y=5)
        assert other.wait(timeout=60) == 10  # the worker goes on with everything else
        with pytest.raises(hi.JobError, match='state.json: not valid JSON'):
            down.wait(timeout=60)
        assert w.poll() is None
    finally:
        stop([w])


def test_fsck_repair_reindexes_a_queued_job_that_lost_its_ticket(root):
    from conftest import run_python
    with hi.Config(job_handler=QueueOnly('q7')):
        job = add.run(x=2, y=3)
    for path, _ in list(iter_tickets(root.layout, 'q7')):
        os.unlink(path)  # as if its submitter died between publishing the job and queueing it...
    an_hour_ago = time.time() - 3600
    os.utime(os.path.join(job.directory, 'state.json'), (an_hour_ago, an_hour_ago))  # ...an hour ago
    out = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', 'fsck', '--repair').stdout
    assert 'queued job without a token' in out and 'repaired' in out, out
    w = start_worker(root, 'q7')
    try:
        assert job.wait(timeout=60) == 5
    finally:
        stop([w])


def test_in_process_job_may_run_and_wait_for_its_own_jobs(root_path):
    from jobfuncs import outer_job
    assert outer_job.run(x=4).wait(timeout=60) == 50


def test_slurm_handler_refuses_a_timeout_no_allocation_can_hold(root_path):
    handler = hi.SlurmJobHandler(time_limit='00:10:00', drain_margin=20)
    with hi.Config(job_handler=handler, job_timeout=3600):
        with pytest.raises(ValueError, match='job_timeout 3600 s cannot fit'):
            add.run(x=1, y=1)
    assert handler.history == []  # refused before anything was written or submitted
    # the worker claims a job only if its timeout fits before the deadline, counted from its start
    # (the time left then, less drain_margin): a job asking for all of that could never be claimed
    with hi.Config(job_handler=handler, job_timeout=580):
        with pytest.raises(ValueError, match='job_timeout 580 s cannot fit .* leaves 520 s for jobs'):
            add.run(x=1, y=1)
    handler.check({'queue': 'q', 'timeout': 520})  # fits (checked without submitting anything)


def test_slurm_handler_asks_no_allocation_for_jobs_waiting_for_their_upstream(root):
    """An allocation submitted for a pending job would idle out while its upstream runs (for
    hours, maybe), and be submitted again: only queued and running jobs are demand."""
    from hither_fs import protocol
    from test_protocol import submit
    upstream = submit(root, queue='elsewhere')
    waiting = [submit(root, queue='s', upstream=[upstream['id']]) for _ in range(3)]
    submit(root, queue='s')
    assert {t.job_id for t in protocol.pending_tokens(root)} == {w['id'] for w in waiting}
    assert hi.SlurmJobHandler().demand(root, 's', [{'jobs': ['a-running-one']}], cap=100) == 2


START_FAILS = """
import sys
import hither_fs as hi
from hither_fs import attempts
from hither_fs.worker import Worker
calls = []
def start(self):  # a fake of os.fork failing (EAGAIN at a process limit; root is exempt from that limit here)
    calls.append(1)
    raise BlockingIOError(11, 'Resource temporarily unavailable')
attempts.Attempt.start = start
Worker(hi.Root(sys.argv[1]), ['q10'], idle_timeout=2).run()
print('starts', len(calls))
"""


def test_a_job_its_worker_cannot_start_is_handed_back_once_not_used_up(root):
    """A worker that cannot start a job (no fork for a moment) hands it back uncounted to the
    front of its queue; it must not claim it again at once, using up every hand-back in
    milliseconds with an error blaming the allocations' time limit."""
    from conftest import run_python
    with hi.Config(job_handler=QueueOnly('q10')):
        job = add.run(x=1, y=2)
    proc = run_python(START_FAILS, root.path)
    assert proc.returncode == 0 and 'starts 1' in proc.stdout, proc.stdout + proc.stderr
    state = job.get_state()
    assert state['status'] == 'queued' and state['handed_back'] == 1
    assert 'could not start it' in state['history'][-1]['why']


def test_a_resumed_worker_reaps_its_lost_run_before_it_claims_the_job_again(root, tmp_path):
    """A worker with two slots is stopped whole (as ``scontrol suspend`` stops an allocation)
    for longer than its lease, and its job is handed back meanwhile. Resumed, it kills its
    lost run; its job's new ticket is at the front of the queue, and the worker must reap
    the lost run before it claims that (runs are kept by job id: the new run took the lost
    one's place, which then was never reaped - a zombie runner, a console file left)."""
    import psutil
    from hither_fs.lease import LeaseJudge, Recovery
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=QueueOnly('q9')):
        job = sleepy.run(seconds=10, pid_file=pid_file, result='ok')  # outlasts the suspension: killed
    worker = start_worker(root, 'q9', '--slots', '2', '--lease', '2')
    try:
        wait_for_file(pid_file)
        started = time.monotonic()
        tree = [psutil.Process(worker.pid)] + psutil.Process(worker.pid).children(recursive=True)
        for p in tree:
            p.send_signal(signal.SIGSTOP)
        recovery, deadline = Recovery(root, LeaseJudge(2)), time.monotonic() + 60
        while job.status != 'queued':  # another worker's lease check hands the job back
            assert time.monotonic() < deadline
            recovery.run()
            time.sleep(0.2)
        time.sleep(max(0.0, started + 6 - time.monotonic()))  # a worker stops a lost run only 5 s after its start
        for p in tree:
            p.send_signal(signal.SIGCONT)
        assert job.wait(timeout=60) == 'ok'
        assert job.get_state()['attempt'] == 2
        zombies = [c.pid for c in psutil.Process(worker.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
        assert zombies == []
        assert [n for n in os.listdir(job.directory) if n.startswith('.')] == []  # no live console file
    finally:
        stop([worker])


ORPHAN = """
import sys
import hither_fs as hi
from hither_fs.worker import Worker
sys.exit(Worker(hi.Root(sys.argv[1]), ['q11'], parent_pid=1).run())  # its submitter: gone
"""


def test_a_worker_whose_submitter_is_gone_waits_only_for_jobs_that_can_run(root, tmp_path):
    """Its queue holds a job waiting for an in-process job of a process that has ended (nothing
    will run that one): the worker exits (workers piled up, for ever). A job waiting for an
    upstream that can still run keeps it."""
    import subprocess
    from hither_fs import protocol
    from hither_fs.runtime.files import write_json
    from hither_fs.runtime.layout import host_label
    with hi.Config(job_handler=QueueOnly('upstream-q')):
        upstream = add.run(x=1, y=1)
    with hi.Config(job_handler=QueueOnly('q11')):
        waiting = add.run(x=upstream, y=1)
    assert waiting.status == 'pending'
    worker = subprocess.Popen([sys.executable, '-c', ORPHAN, root.path],
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS])))
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # its upstream may still run: it waits
            worker.wait(timeout=3)
        # the upstream is now an in-process job of a process that has ended (its queue says so)
        gone = subprocess.Popen([sys.executable, '-c', 'pass'])
        gone.wait()
        state = protocol.read_state(root, upstream.id)
        dead_queue = 'inproc-{}-{}-0'.format(host_label(), gone.pid)
        write_json(root.layout.state_file(upstream.id), dict(state, queue=dead_queue))
        assert worker.wait(timeout=30) == 0
    finally:
        stop([worker])
    assert waiting.status == 'pending'  # left for the next workers of its queue

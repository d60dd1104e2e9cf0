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
from hither_fs import queue
from hither_fs.runtime.files import CorruptFileError
from jobfuncs import add, chaos_square, echo, sleepy
from test_jobs import wait_for_file


class QueueOnly(hi.JobHandler):
    """A real handler that only names a queue; the test starts the workers itself."""

    def __init__(self, name):
        self.name = name

    def queue_for(self, root):
        return self.name


def start_worker(root, queue_name, *extra, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.Popen([sys.executable, '-m', 'hither_fs', 'worker', '--root', root.path,
                             '--queue', queue_name, '--heartbeat', '0.5', '--log-level', 'warning'] + list(extra),
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


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
    for d in ('running', os.path.join('queue', 'chaos')):
        assert [n for n in os.listdir(os.path.join(root.path, d)) if not n.startswith('.')] == []
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
        job = sleepy.run(seconds=2, pid_file=pid_file, result='ok')
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
    assert state['attempt'] == 2 and 'dead' in state['requeued']


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
    sha1 = root.read_job_file(job.id, 'result.json')['value']['sha1']
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


def test_lock_of_a_dead_process_does_not_block(root):
    with hi.Config(job_handler=QueueOnly('q5')):
        job = add.run(x=1, y=1)
    code = ('import sys, time, hither_fs as hi; lock = hi.Root(sys.argv[1]).lock(sys.argv[2]); '
            'lock.acquire(); print("locked", flush=True); time.sleep(600)')
    holder = subprocess.Popen([sys.executable, '-c', code, root.path, job.id], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO))
    assert holder.stdout.readline().strip() == 'locked'
    import filelock
    with pytest.raises(filelock.Timeout):
        root.lock(job.id, timeout=0.2).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with root.lock(job.id, timeout=5):
        pass
    assert queue.cancel(root, job.id) == 'cancelled'


def test_a_damaged_upstream_record_fails_only_its_own_pipeline(root):
    with hi.Config(job_handler=QueueOnly('q6')):
        up = add.run(x=1, y=1)
        down = add.run(x=up, y=1)
        other = add.run(x=5, y=5)
    with open(os.path.join(up.directory, 'state.json'), 'w') as f:
        f.write('{"status": "fin')  # damaged while the downstream job waits on it
    w = start_worker(root, 'q6')
    try:
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
    queue_dir = os.path.join(root.path, 'queue', 'q7')
    for ticket in os.listdir(queue_dir):
        os.unlink(os.path.join(queue_dir, ticket))  # as if its writer died at the wrong moment
    out = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', 'fsck', '--repair').stdout
    assert 'queued job without a ticket' in out and 'repaired' in out, out
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

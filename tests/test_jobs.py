"""Jobs on local worker daemons: status, console, runtime facts, cancel, timeout, pipelines."""

import json
import os
import time

import numpy as np
import psutil
import pytest

import hither_fs as hi
from hither_fs.queue import iter_tickets
from jobfuncs import add, burn, echo, fail, noisy, sleepy, spawn_tree


def wait_for_file(path, timeout=30):
    """Wait for a file a job writes (by atomic rename) to appear."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not os.path.exists(path):
        assert time.monotonic() < deadline, 'timed out waiting for ' + path
        time.sleep(delay)
        delay = min(0.05, delay * 2)
    with open(path) as f:
        return f.read()


def wait_for_status(job, wanted, timeout=30):
    deadline = time.monotonic() + timeout
    while job.status != wanted:
        assert time.monotonic() < deadline, 'job stayed {}'.format(job.status)
        time.sleep(0.01)


def gone(pid, timeout=10):
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_statuses_console_and_runtime_info(root_path, parallel, tmp_path):
    with hi.Config(job_handler=parallel(1)):
        blocker = sleepy.run(seconds=60, pid_file=str(tmp_path / 'pid'))
        queued = noisy.run(n=3)
        wait_for_file(str(tmp_path / 'pid'))
        assert blocker.status == 'running'
        assert queued.status == 'queued'
        blocker.cancel()
        assert queued.wait(timeout=30) == 3
    out = queued.get_console_output()
    assert out['stdout'] == 'line 0\nline 1\nline 2\n'
    assert out['stderr'] == 'to stderr\n'
    info = queued.get_runtime_info()
    for key in ('host', 'pid', 'start', 'end', 'wall_seconds', 'cpu_seconds', 'peak_memory_bytes', 'worker'):
        assert key in info, key
    # a human finds the same things by hand
    d = queued.directory
    assert sorted(os.listdir(d)) == ['spec.json', 'state.json', 'stderr.txt', 'stdout.txt']
    with open(os.path.join(d, 'state.json')) as f:
        state = json.load(f)
    assert state['status'] == 'finished' and state['result'] == {'value': 3}
    assert state['runtime']['pid'] == info['pid'] and state['console'] == {'stdout': 21, 'stderr': 10}
    quiet = [n for n in os.listdir(blocker.directory) if n.endswith('.txt')]
    assert quiet == []  # no output, no console files


def test_cpu_and_peak_memory_are_measured(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = burn.run(seconds=0.5, megabytes=200)
        job.wait(timeout=60)
    info = job.get_runtime_info()
    assert info['cpu_seconds'] >= 0.45
    assert info['peak_memory_bytes'] >= 200 * 1024 * 1024


def test_error_on_worker_keeps_type_message_traceback(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = fail.run(message='no good')
        with pytest.raises(ValueError, match='no good') as info:
            job.wait(timeout=30)
    assert 'jobfuncs.py' in info.value.remote_traceback
    assert job.get_state()['error']['type'] == 'ValueError'


def test_cancel_running_job_kills_its_process_tree(root_path, parallel, tmp_path):
    pid_file = str(tmp_path / 'pids')
    with hi.Config(job_handler=parallel(1)):
        job = spawn_tree.run(pid_file=pid_file)
    pids = [int(p) for p in wait_for_file(pid_file).split()]
    assert job.cancel()
    with pytest.raises(hi.JobCancelledError):
        job.wait(timeout=30)
    assert job.status == 'cancelled'
    for pid in pids:
        assert gone(pid), pid
    assert job.cancel() is True or job.status == 'cancelled'  # idempotent


def test_job_timeout_kills_the_job(root_path, parallel, tmp_path):
    pid_file = str(tmp_path / 'pids')
    with hi.Config(job_handler=parallel(1), job_timeout=1):
        job = spawn_tree.run(pid_file=pid_file)
        with pytest.raises(hi.JobTimeoutError, match='job_timeout of 1 s'):
            job.wait(timeout=60)
    for pid in (int(p) for p in wait_for_file(pid_file).split()):
        assert gone(pid), pid


def test_pipeline_across_workers(root_path, parallel):
    with hi.Config(job_handler=parallel(2)):
        a = echo.run(x=np.ones((4, 3)))
        b = add.run(x=a, y=a)
        c = add.run(x={'nested': [b]}['nested'][0], y=1)
        assert np.array_equal(c.wait(timeout=60), 3 * np.ones((4, 3)))


def test_upstream_error_fails_downstream_naming_it(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        bad = fail.run(message='upstream broke')
        down = add.run(x=bad, y=1)
        further = add.run(x=down, y=1)
        with pytest.raises(hi.UpstreamJobError) as info:
            further.wait(timeout=60)
    assert down.status == 'error'
    assert bad.id in down.get_state()['error']['message']
    assert 'fail' in down.get_state()['error']['message']
    assert down.id in str(info.value)


def test_worker_refuses_root_writable_by_others(root, tmp_path):
    from conftest import run_python
    os.chmod(root.path, 0o777)
    try:
        proc = run_python('import hither_fs.cli as c, sys; sys.exit(c.main(["worker", "--root", sys.argv[1]]))',
                          root.path, timeout=60)
    finally:
        os.chmod(root.path, 0o700)
    assert proc.returncode == 2
    assert 'refusing to run jobs' in proc.stderr and 'writable by every user' in proc.stderr


def test_queue_index_holds_only_live_work(root, parallel):
    with hi.Config(job_handler=parallel(2)):
        jobs = [add.run(x=i, y=1) for i in range(30)]
        hi.wait()
    assert [j.get_result() for j in jobs] == list(range(1, 31))
    # finished jobs leave no trace where workers look for work: no ticket, no claim
    assert list(iter_tickets(root.layout, jobs[0].spec['queue'])) == []
    assert os.listdir(os.path.join(root.path, 'running')) == []
    assert os.listdir(os.path.join(root.path, 'pending')) == []
    # and three files at most in a job's directory: spec, state, and console output only if any
    assert {len(os.listdir(j.directory)) for j in jobs} == {2}
    # every file in the root has its final name: no temp files left behind
    leftovers = [os.path.join(dp, f) for dp, _, fs in os.walk(root.path) for f in fs if '.tmp-' in f]
    assert leftovers == []

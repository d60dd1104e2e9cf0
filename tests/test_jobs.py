"""Jobs on local worker daemons: status, console, runtime facts, cancel, timeout, pipelines."""

import json
import os
import time

import numpy as np
import psutil
import pytest

import hither_fs as hi
from conftest import missing_infrastructure
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
    # a human finds the same things by hand (the worker renames the console output into
    # place just after it published the final state, which a waiter may see at once)
    d = queued.directory
    for name in ('stdout.txt', 'stderr.txt'):
        wait_for_file(os.path.join(d, name))
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


def test_console_output_in_the_moment_the_worker_renames_it_into_place(root_path, parallel, monkeypatch):
    from hither_fs import job as job_module
    from hither_fs.runtime.layout import live_console_prefix
    with hi.Config(job_handler=parallel(1)):
        job = noisy.run(n=2)
        job.wait(timeout=60)
    final = os.path.join(job.directory, 'stdout.txt')
    wait_for_file(final)
    wait_for_file(os.path.join(job.directory, 'stderr.txt'))
    expected = job.get_console_output()
    assert expected['stdout'] == 'line 0\nline 1\n'
    state = job.get_state()
    live = os.path.join(job.directory, live_console_prefix('stdout', state['gen'], state['attempt']) + 'tmp-h.1.ab')
    os.rename(final, live)  # as the job's final state is published, before the worker's rename
    assert job.get_console_output() == expected
    read = job_module.read_text_tail

    def renamed_meanwhile(path):  # the worker's rename between finding the live file and reading it
        if os.path.exists(live):
            os.rename(live, final)
        return read(path)
    monkeypatch.setattr(job_module, 'read_text_tail', renamed_meanwhile)
    assert job.get_console_output() == expected


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


def test_a_pipeline_mixing_handlers_runs_whichever_job_is_waited_for(root_path, parallel):
    """hither's own docs: every job has its own handler, in one pipeline. The middle job runs
    in this process, which runs it only when asked: waiting for the last job (or hi.wait())
    must run it (the wait asked the last job's handler only, and hung)."""
    workers = parallel(1)
    with hi.Config(job_handler=workers):
        a = add.run(x=1, y=1)
    b = add.run(x=a, y=1)  # the default handler: in this process
    with hi.Config(job_handler=workers):
        c = add.run(x=b, y=1)
    assert c.wait(timeout=60) == 4
    assert b.get_runtime_info()['pid'] == os.getpid()
    with hi.Config(job_handler=workers):
        d = add.run(x=c, y=1)
    e = add.run(x=d, y=1)
    with hi.Config(job_handler=workers):
        f = add.run(x=e, y=1)
    hi.wait(timeout=60)
    assert f.get_result() == 7


def test_a_wait_never_blocks_on_an_in_process_job_another_thread_runs(root_path, parallel, tmp_path):
    """The main thread runs an in-process job; another thread waits for a local worker's job.
    Its wait also runs this process's in-process jobs, but never waits for a handler busy in
    another thread (it stalled until that job ended: a deadlock when that job waited in turn)."""
    import threading
    from jobfuncs import gate
    flag, got = str(tmp_path / 'flag'), {}
    workers = parallel(1)

    def wait_in_thread():
        with hi.Config(job_handler=workers):
            job = add.run(x=1, y=2)
        got['result'] = job.wait(timeout=60)
        open(flag, 'w').close()
    add.run(x=0, y=0).wait()  # (the in-process handler now has this root)
    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    assert gate.run(path=flag, timeout=60).wait() is True  # ends once the thread's wait returned
    thread.join(60)
    assert got == {'result': 3}


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


# -- waiting: prompt at first, cheap later, woken by inotify on a root of this machine -----------

def test_the_poll_schedule_starts_fast_and_backs_off_smoothly():
    from hither_fs.job import (POLL_LAG_MAX, POLL_MAX, POLL_MAX_LONG, POLL_MIN, POLL_SHARE, POLL_WATCHED,
                               poll_interval)
    assert poll_interval(0) == POLL_MIN
    assert poll_interval(0.005) <= 0.001  # a 5 ms job is noticed within a millisecond
    waited = [k / 1000 for k in range(0, 120000, 7)]
    intervals = [poll_interval(t) for t in waited]
    assert intervals == sorted(intervals)  # never faster again as the wait goes on
    assert all(i <= max(POLL_MIN, POLL_SHARE * t) for t, i in zip(waited, intervals) if t <= 0.1)
    assert POLL_MAX <= poll_interval(1) < 1.1 * POLL_MAX and poll_interval(60) == poll_interval(3600) == POLL_MAX_LONG
    # a wait that may lag (hi.wait() while other jobs remain): a share of the time waited, bounded
    assert poll_interval(2, POLL_MAX, lag=0.05) == 0.1 and poll_interval(100, lag=0.05) == POLL_LAG_MAX
    # watched by inotify: looks without an event are a safety net only
    assert poll_interval(0, watched=True) == POLL_WATCHED and poll_interval(100, lag=0.05, watched=True) == POLL_LAG_MAX

    def looks(seconds, **kwargs):
        t, n = 0.0, 0
        while t < seconds:
            t, n = t + poll_interval(t, **kwargs), n + 1
        return n
    # waiting 10 s: some 700 opens of state.json when polled (~20 us each), a hundred when watched
    assert looks(10) < 800 and looks(10, watched=True) <= 10 / POLL_WATCHED + 1
    assert looks(3600) < 3600 / POLL_MAX_LONG + 2000  # an hour: 20 looks a second


def need_inotify(path):
    """Fail (under CI, whose temporary directory is on a local disk) or skip unless inotify
    watches ``path``."""
    from hither_fs import dirwatch
    sub = dirwatch.subscribe(path, lambda: None) if dirwatch.is_local(path) else None
    if sub is None:
        missing_infrastructure('no inotify for {} here'.format(path))
    dirwatch.unsubscribe(sub)


def _finish_by_hand(root, job, value):
    """Claim a job from its queue and commit a result for it, as a worker would."""
    from hither_fs import protocol
    [(path, _)] = list(iter_tickets(root.layout, job.spec['queue']))
    claim = protocol.claim(root, path, 'w-test', job.spec)
    assert protocol.commit(root, claim, protocol.Outcome(result={'value': value}, runtime={'start': 0})) == 'finished'


def test_a_wait_on_a_root_of_this_machine_is_woken_by_the_change(root, monkeypatch):
    import threading

    from hither_fs import dirwatch, job as job_module
    from test_faults import QueueOnly
    need_inotify(root.path)
    # no look without an event for an hour: only inotify can end this wait before its timeout
    monkeypatch.setattr(job_module, 'POLL_WATCHED', 3600.0)
    monkeypatch.setattr(job_module, 'HELP_INTERVAL', 3600.0)
    subs, looked = [], threading.Event()
    subscribe = dirwatch.subscribe

    def spy(path, wake):
        subs.append(subscribe(path, wake))
        return subs[-1]
    monkeypatch.setattr(dirwatch, 'subscribe', spy)
    with hi.Config(job_handler=QueueOnly('by-hand')):
        job = add.run(x=1, y=2)
    read_state = job._read_state

    def look():
        state = read_state()
        if subs:  # the look after subscribing: the job ends after it
            looked.set()
        return state
    job._read_state = look
    finisher = threading.Thread(target=lambda: looked.wait(30) and _finish_by_hand(root, job, 3))
    finisher.start()
    started = time.monotonic()
    assert job.wait(timeout=60) == 3
    assert time.monotonic() - started < 30  # woken, not the look at the timeout
    finisher.join()
    assert subs and subs[0] is not None  # watched, so it was the change that woke the wait


def test_a_wait_on_a_shared_filesystem_polls(root_path, parallel, monkeypatch):
    from hither_fs import dirwatch
    monkeypatch.setattr(dirwatch, 'is_local', lambda path: False)  # as on NFS: no inotify, polling only
    monkeypatch.setattr(dirwatch, 'subscribe', None)  # never called
    with hi.Config(job_handler=parallel(1)):
        assert add.run(x=1, y=2).wait(timeout=60) == 3
        assert add.run(x=2, y=2).result(timeout=60) == 4


def test_inotify_is_used_only_on_filesystems_of_this_machine(tmp_path):
    from hither_fs import dirwatch
    mountinfo = tmp_path / 'mountinfo'
    mountinfo.write_text('\n'.join([
        '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
        '40 22 0:40 / /scratch rw shared:7 - lustre 10.0.0.1@tcp:/fs rw',
        '41 22 0:41 / /home rw - nfs4 server:/home rw,vers=4.2',
        '42 41 0:42 / /home/me/local\\040disk rw master:3 - xfs /dev/sdb1 rw',
        '43 22 0:43 / /tmp rw - tmpfs tmpfs rw',
        '44 22 0:44 / /tmp rw - nfs server:/tmp rw',  # mounted over /tmp: the later one counts
    ]) + '\n')

    def kind(path):
        return dirwatch.fs_type(path, mountinfo=str(mountinfo))
    assert kind('/data/root') == 'ext4' and kind('/scratch/me/root') == 'lustre'
    assert kind('/home/me/root') == 'nfs4' and kind('/home/me/local disk/root') == 'xfs'
    assert kind('/tmp/x') == 'nfs' and kind('/scratchy') == 'ext4'
    assert {'ext4', 'xfs', 'tmpfs'} <= dirwatch.LOCAL_TYPES
    assert not {'nfs', 'nfs4', 'lustre', 'gpfs', 'beegfs', 'cifs', 'fuse.sshfs'} & dirwatch.LOCAL_TYPES
    assert dirwatch.fs_type('/x', mountinfo=str(tmp_path / 'absent')) is None


def test_dirwatch_wakes_a_subscriber_when_a_file_is_renamed_in(tmp_path):
    import threading

    from hither_fs import dirwatch
    need_inotify(str(tmp_path))
    woken = threading.Event()
    sub = dirwatch.subscribe(str(tmp_path), woken.set)
    assert sub is not None
    try:
        (tmp_path / 'state.json.tmp').write_text('{}')
        os.rename(str(tmp_path / 'state.json.tmp'), str(tmp_path / 'state.json'))
        assert woken.wait(30)
    finally:
        dirwatch.unsubscribe(sub)
    assert dirwatch.subscribe(str(tmp_path / 'absent'), woken.set) is None  # the caller polls then

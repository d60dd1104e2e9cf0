"""Warm runners: a worker slot runs its jobs one after another in one long-lived
process (hither_fs.runners, hither_fs.runtime.runner), and each job still gets
its own console, CPU time, peak memory, environment and working directory;
whatever a job leaves behind that cannot be undone retires the runner."""

import os
import time

import psutil
import pytest

import hither_fs as hi
from runnerfuncs import (big_child, change_process, close_inherited, exit_now, fork_and_return, helper_version,
                         hold_memory, lazy_module, leave_child, leave_daemon, leave_thread, meddle, process_facts,
                         say_then_exit, say_then_leave_thread, signal_deferred, spin, unfixable, where)


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(delay)
        delay = min(0.05, delay * 2)


def ends(pid):
    """Wait for process ``pid`` (not ours: a worker's runner) to end."""
    try:
        psutil.Process(pid).wait(30)
    except psutil.NoSuchProcess:
        pass
    return True


def test_jobs_of_a_slot_share_one_runner_and_import_once(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        first = where.run(x=1).wait()
        second = where.run(x=2).wait()
    assert second['pid'] == first['pid']
    assert (first['imports'], second['imports']) == (1, 1)
    assert (first['calls'], second['calls']) == (1, 2)  # module state lives on, as in any process pool
    assert first['job_id'] != second['job_id']


def test_each_job_has_its_own_console_and_runtime_facts(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        jobs = [where.run(x=i) for i in range(3)]
        hi.wait()
    for i, job in enumerate(jobs):
        assert job.get_console_output() == {'stdout': 'job {}\n'.format(i), 'stderr': 'err {}\n'.format(i)}
        info = job.get_runtime_info()
        assert info['pid'] == job.wait()['pid']
        assert info['runner_job'] == i + 1
        assert info['exit_code'] == 0


def test_what_a_job_changes_is_put_back_for_the_next(root_path, parallel, tmp_path):
    with hi.Config(job_handler=parallel(1)):
        before = where.run(x=0).wait()
        pid = meddle.run(directory=str(tmp_path)).wait()
        after = where.run(x=1).wait()
    assert pid == before['pid'] == after['pid']
    assert after['cwd'] == before['cwd'] != str(tmp_path)
    assert after['env'] is None and not after['path_has_marker']
    assert after['umask'] == before['umask'] != 0o077
    assert after['job_id'] != before['job_id']


@pytest.mark.parametrize('leave', ['thread', 'child'])
def test_a_job_that_leaves_work_running_retires_its_runner(root_path, parallel, tmp_path, leave):
    with hi.Config(job_handler=parallel(1)):
        if leave == 'thread':
            pid = leave_thread.run(seconds=60).wait()
        else:
            pid = leave_child.run(pid_file=str(tmp_path / 'child')).wait()
        assert ends(pid)  # the runner ends once it answered
        assert where.run(x=1).wait()['pid'] != pid
    if leave == 'child':
        psutil.Process(int((tmp_path / 'child').read_text())).kill()


def test_a_job_that_ends_its_process_fails_alone(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        first = where.run(x=0).wait()['pid']
        dead = exit_now.run(code=0)
        with pytest.raises(hi.JobError, match='ended without writing a result'):
            dead.wait()
        assert ends(first)
        assert where.run(x=1).wait()['pid'] != first


def test_cpu_time_and_peak_memory_are_each_jobs_own(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        big = hold_memory.run(megabytes=300, keep=False)
        busy = spin.run(seconds=0.5)
        small = where.run(x=0)
        hi.wait()
    assert big.wait() == busy.wait() == small.wait()['pid']
    big_info, busy_info, small_info = (j.get_runtime_info() for j in (big, busy, small))
    assert big_info['peak_memory_bytes'] > 300 << 20
    assert small_info['peak_memory_bytes'] < big_info['peak_memory_bytes'] - (200 << 20)
    assert busy_info['cpu_seconds'] >= 0.45
    assert small_info['cpu_seconds'] < 0.2


def test_memory_a_job_keeps_retires_its_runner(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        first = where.run(x=0).wait()['pid']  # what the runner has after its first job is its baseline
        pid = hold_memory.run(megabytes=600, keep=True).wait()
        assert pid == first
        assert ends(pid)
        assert where.run(x=0).wait()['pid'] != pid


def test_a_timeout_kills_the_runner_and_the_next_job_gets_a_new_one(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        first = where.run(x=0).wait()['pid']
        with hi.Config(job_timeout=0.5):
            slow = spin.run(seconds=60)
        with pytest.raises(hi.JobError, match='job_timeout'):
            slow.wait()
        assert where.run(x=1).wait()['pid'] != first


def test_fresh_process_gives_each_job_a_process_of_its_own(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        warm = where.run(x=0).wait()
        with hi.Config(fresh_process=True):
            fresh = [where.run(x=i).wait() for i in (1, 2)]
    assert len({warm['pid'], fresh[0]['pid'], fresh[1]['pid']}) == 3
    assert [f['calls'] for f in fresh] == [1, 1]  # nothing of an earlier job's module state


def test_fresh_process_must_be_a_bool():
    with pytest.raises(ValueError, match='fresh_process must be True or False'):
        hi.Config(fresh_process='yes')


def test_a_daemon_a_job_leaves_retires_the_runner_and_never_writes_into_the_next_jobs_console(
        root_path, parallel, tmp_path):
    done = tmp_path / 'printed'
    with hi.Config(job_handler=parallel(1)):
        pid = leave_daemon.run(seconds=0.5, text='LEFT-BEHIND', done_file=str(done)).wait()
        assert ends(pid)  # the runner is the daemon's parent (a subreaper) and retires
        later = where.run(x=1)
        assert later.wait()['pid'] != pid
        wait_for(done.exists)  # the daemon has printed, into the files of the job that left it
    assert 'LEFT-BEHIND' not in later.get_console_output()['stdout']


def test_a_process_a_job_forks_never_answers_for_it(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        assert fork_and_return.run(value='mine').wait() == 'mine'
        assert where.run(x=1).wait()['calls'] >= 1


def test_a_runner_killed_after_it_answered_is_never_given_another_job(tmp_path):
    """A timeout or a cancel can come between a runner's answer and the worker reading it:
    the runner is killed then, and must not go back to the idle ones (the next job would
    die with it). Fake: the pool's jobs are answered by a runner told to do nothing."""
    from hither_fs.runners import RunnerPool
    pool = RunnerPool(str(tmp_path), 1, str(tmp_path / 'scratch'), key=lambda spec: 0, prepare=lambda spec: None)
    try:
        runner = pool.acquire({})
        runner.doomed = True  # what Attempt.kill does
        pool.release(runner, {'outcome': {'result': {'value': 1}}})
        assert pool.idle == [] and runner.status is not None
        assert pool.acquire({}) is not runner
    finally:
        pool.close()


def test_a_local_worker_finds_its_siblings_to_wake(root_path, parallel):
    """A worker whose commit queued the jobs that waited for its job wakes the other
    workers its submitting process started (hither_fs.worker.Worker._wake_siblings):
    they are found as that process's children serving the same root."""
    from hither_fs import runners
    handler = parallel(2)
    with hi.Config(job_handler=handler):
        where.run(x=0).wait()
    pids = sorted(p.pid for ps in handler._workers.values() for p in ps)
    assert len(pids) == 2
    assert sorted(runners.local_workers(os.getpid(), hi.Root.get(root_path).path)) == pids
    assert runners.local_workers(os.getpid(), root_path + '-another') == []


def test_a_job_whose_runner_ends_or_retires_keeps_its_console(root_path, parallel):
    """A runner that ends (the job called os._exit) or retires (it left a thread) takes
    its directory with it: the job's console is copied into the root first."""
    with hi.Config(job_handler=parallel(1)):
        died = say_then_exit.run(text='last words', code=3)
        with pytest.raises(hi.JobError):
            died.wait()
        left = say_then_leave_thread.run(text='still here')
        left.wait()
    assert died.get_console_output() == {'stdout': 'last words\n', 'stderr': 'last words\n'}
    assert left.get_console_output()['stdout'] == 'still here\n'


def test_what_a_job_changes_in_its_process_is_put_back(root_path, parallel):
    """Signal handlers and mask, an alarm, resource limits and CPU affinity a job set are
    put back before the next job, in the same runner (a command's exit status stays true)."""
    with hi.Config(job_handler=parallel(1)):
        before = process_facts.run().wait()
        pid = change_process.run().wait()
        after = process_facts.run().wait()
    assert before['pid'] == pid == after['pid']
    assert after == before and after['rc'] == 3 and after['alarm'] == 0


@pytest.mark.parametrize('how', ['stdout', 'fds'])
def test_what_cannot_be_put_back_retires_the_runner(root_path, parallel, how):
    """A closed sys.stdout, 300 leaked file descriptors: the next job gets a fresh
    runner, and runs as it would in a fresh process."""
    with hi.Config(job_handler=parallel(1)):
        where.run(x=0).wait()
        pid = unfixable.run(how=how).wait()
        job = where.run(x=1)
        after = job.wait()
    assert after['pid'] != pid and ends(pid)
    assert job.get_console_output()['stdout'] == 'job 1\n'


def test_a_nice_value_a_job_raised_is_not_the_next_jobs(root_path, parallel):
    """Put back where the runner may (as root), else the runner retires."""
    with hi.Config(job_handler=parallel(1)):
        pid = unfixable.run(how='nice').wait()
        facts = process_facts.run().wait()
    assert facts['nice'] == 0 and (facts['pid'] == pid) == (os.geteuid() == 0)


def test_a_job_that_closes_the_runners_pipes_keeps_its_result(root_path, parallel):
    """Its runner cannot answer on its pipe: it leaves the answer for the worker and ends."""
    with hi.Config(job_handler=parallel(1)):
        job = close_inherited.run(value=42)
        assert job.wait() == 42
        assert where.run(x=1).wait()['pid'] != job.get_runtime_info()['pid']


def test_a_jobs_peak_memory_counts_its_child_processes(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = big_child.run(megabytes=200)
        job.wait()
    assert job.get_runtime_info()['peak_memory_bytes'] >= 200 << 20


def test_a_runner_whose_jobs_code_was_edited_is_not_given_another_job(root_path, parallel, tmp_path):
    """A module a job imported from the user's own code (not an installed package) is
    edited: the next job gets a fresh runner, which imports the file as it is now - as a
    fresh process would. Unchanged code keeps its runner."""
    import importlib
    import sys
    (tmp_path / 'edited_helper.py').write_text('VALUE = 1\n')
    (tmp_path / 'edited_main.py').write_text(
        'import os\nimport hither_fs as hi\nimport edited_helper\n\n\n@hi.function("edited_get", "0.1.0")\n'
        'def edited_get():\n    return [edited_helper.VALUE, os.getpid()]\n')
    sys.path.insert(0, str(tmp_path))
    try:
        main = importlib.import_module('edited_main')
        with hi.Config(job_handler=parallel(1)):
            first = main.edited_get.run().wait()
            again = main.edited_get.run().wait()
            (tmp_path / 'edited_helper.py').write_text('VALUE = 22\n')
            edited = main.edited_get.run().wait()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('edited_main', None)
        sys.modules.pop('edited_helper', None)
    assert first == again and first[0] == 1
    assert edited[0] == 22 and edited[1] != first[1]


def test_what_the_kernel_will_not_put_back_makes_a_runner_unfit(monkeypatch):
    """In this process, the kernel's refusals faked (as root, this machine's tests raise
    them back): a raised nice value or a lowered hard limit that cannot be put back is
    named, and the runner retires (see the tests above for what it puts back)."""
    import errno
    import resource

    from hither_fs.runtime import runner
    state = runner._ProcessState()
    assert state.restore() is None  # nothing changed: nothing to say

    def refuse(*args):
        raise PermissionError(errno.EACCES, 'Permission denied')
    monkeypatch.setattr(runner.os, 'getpriority', lambda *args: state.priority + 5)
    monkeypatch.setattr(runner.os, 'setpriority', refuse)
    lowered = {resource.RLIMIT_NOFILE: (64, 64)}
    monkeypatch.setattr(runner.resource, 'getrlimit', lambda limit, real=resource.getrlimit: lowered.get(limit) or real(limit))
    monkeypatch.setattr(runner.resource, 'setrlimit', lambda *args: refuse())
    assert state.restore() == "the job changed its process's resource limits and priority, which cannot be put back"


def test_a_lazily_loaded_module_a_job_left_is_never_loaded_by_the_runner(root_path, parallel, tmp_path):
    """The runner looks at what a job imported without touching a module's attributes
    (a LazyLoader module runs its code at the first one)."""
    (tmp_path / 'optional.py').write_text('open({!r}, "w").close()\nraise ImportError("not here")\n'.format(
        str(tmp_path / 'loaded')))
    with hi.Config(job_handler=parallel(1)):
        assert isinstance(lazy_module.run(path=str(tmp_path / 'optional.py')).wait(), int)
    assert not (tmp_path / 'loaded').exists()


def test_a_module_edited_while_its_job_ran_is_not_run_as_it_was(root_path, parallel, tmp_path):
    (tmp_path / 'versioned_helper.py').write_text('VERSION = 1\n')
    with hi.Config(job_handler=parallel(1)):
        first = helper_version.run(directory=str(tmp_path), edit_to=22).wait()  # (a new size: Python's
        second = helper_version.run(directory=str(tmp_path)).wait()            # bytecode check sees it)
    assert (first['version'], second['version']) == (1, 22) and first['pid'] != second['pid']


def test_a_signal_a_job_left_pending_does_not_end_the_runner(root_path, parallel):
    """Its handler is put back (the default: the end of the process) only once the signal
    the job blocked is taken away."""
    with hi.Config(job_handler=parallel(1)):
        pid = signal_deferred.run().wait()
        assert where.run(x=1).wait()['pid'] == pid

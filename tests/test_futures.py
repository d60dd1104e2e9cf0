"""A ``Job`` is a ``concurrent.futures.Future``: checked with the standard library's own functions,
on real workers, and (for the in-process handler) in this process."""

import concurrent.futures as cf
import shutil
import threading
import time

import pytest

import hither_fs as hi
from jobfuncs import add, fail, sleepy


def test_as_completed_yields_jobs_in_the_order_they_end(root_path, parallel, tmp_path):
    with hi.Config(job_handler=parallel(2)):
        slow = sleepy.run(seconds=30, pid_file=str(tmp_path / 'slow.pid'), result='slow')
        quick = add.run(x=1, y=2)
        order = []
        for job in cf.as_completed([slow, quick], timeout=60):
            order.append(job)
            if job is quick:
                assert not slow.done()
                slow.cancel()
        assert order == [quick, slow]
    assert quick.result() == 3 and quick.exception() is None
    assert slow.cancelled()
    with pytest.raises(cf.CancelledError):
        slow.result()
    with pytest.raises(cf.CancelledError):
        slow.exception()


def test_wait_first_exception_and_all_completed(root_path, parallel, tmp_path):
    with hi.Config(job_handler=parallel(2)):
        broken = fail.run(message='boom')
        long = sleepy.run(seconds=60)
        done, not_done = cf.wait([broken, long], timeout=60, return_when=cf.FIRST_EXCEPTION)
        assert done == {broken} and not_done == {long}
        assert isinstance(broken.exception(), ValueError) and 'boom' in str(broken.exception())
        long.cancel()
        done, not_done = cf.wait([broken, long], timeout=60)
        assert done == {broken, long} and not not_done
        # already ended jobs are seen done at once, even with no time to wait
        done, not_done = cf.wait([broken, long], timeout=0)
        assert done == {broken, long}


def test_result_and_exception_time_out_as_futures_do(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = sleepy.run(seconds=60)
        with pytest.raises(cf.TimeoutError):
            job.result(timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            job.exception(timeout=0.2)
        assert not job.done() and not job.cancelled()
        assert job.cancel()


def test_done_callbacks_run_once_when_the_job_ends(root_path, parallel):
    ended = threading.Event()
    calls = []

    def callback(job):
        calls.append((job.id, job.result()))
        ended.set()

    with hi.Config(job_handler=parallel(1)):
        job = add.run(x=2, y=3)
        job.add_done_callback(callback)
        assert ended.wait(60)
        late = []
        job.add_done_callback(late.append)  # already done: called at once, here
        assert late == [job]
    assert calls == [(job.id, 5)]


def test_in_process_jobs_complete_for_as_completed_too(root_path):
    # DefaultJobHandler runs jobs in this process: the watcher runs them while as_completed waits
    jobs = [add.run(x=i, y=1) for i in range(3)]
    assert sorted(j.result() for j in cf.as_completed(jobs, timeout=60)) == [1, 2, 3]


def test_a_job_is_a_future_and_generic():
    assert issubclass(hi.Job, cf.Future)
    assert issubclass(hi.JobCancelledError, cf.CancelledError) and issubclass(hi.JobCancelledError, hi.JobError)
    assert hi.Job[int] is not None  # subscriptable, for annotations


def test_a_removed_job_completes_with_its_error(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        job = add.run(x=1, y=1)
        job.wait(timeout=60)
    fresh = hi.get_job(job.id)
    shutil.rmtree(fresh.directory)
    assert fresh.done()  # as_completed and wait would hand it out, and its result says why
    with pytest.raises(FileNotFoundError, match='is not in root'):
        fresh.result()
    assert list(cf.as_completed([fresh], timeout=5)) == [fresh]
    assert isinstance(fresh.exception(), FileNotFoundError) and not fresh.cancelled()
    done, _ = cf.wait([fresh], timeout=5, return_when=cf.FIRST_EXCEPTION)
    assert done == {fresh}


def test_two_handles_on_one_job_both_complete(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        first = sleepy.run(seconds=0.3, result='x')
        second = hi.get_job(first.id)
        third = hi.get_job(first.id)
        assert first == second and first is not second
        called = threading.Event()
        third.add_done_callback(lambda job: called.set())
        assert list(cf.as_completed([second], timeout=60)) == [second]
        assert called.wait(60) and first.result(timeout=60) == 'x'


def test_a_slow_callback_does_not_hold_up_other_jobs(root_path, parallel, tmp_path):
    release = threading.Event()
    with hi.Config(job_handler=parallel(2)):
        a = add.run(x=1, y=1)
        a.add_done_callback(lambda job: release.wait(60))  # blocks the callback thread
        b = sleepy.run(seconds=0.2, result='b')
        assert list(cf.as_completed([b], timeout=30)) == [b]  # completed all the same
        release.set()


def test_the_watcher_is_woken_by_the_change_on_a_root_of_this_machine(root, monkeypatch):
    from hither_fs import watch
    from test_faults import QueueOnly
    from test_jobs import _finish_by_hand, need_inotify
    need_inotify(root.path)
    # passes over every job an hour apart: only inotify can complete the future before the timeout
    for name in ('POLL_MIN', 'POLL_WATCHED', 'HELP_INTERVAL'):
        monkeypatch.setattr(watch, name, 3600.0)
    with hi.Config(job_handler=QueueOnly('by-hand')):
        job = add.run(x=1, y=2)
    watcher = watch.watcher

    class Wake(threading.Event):
        """The watcher's wake-up; ``idle`` once it sleeps for long with the job watched by inotify."""
        idle = threading.Event()

        def wait(self, timeout=None):
            if timeout is not None and timeout > 1000 and id(job) in watcher._subs and not watcher._changed:
                self.idle.set()
            return super().wait(timeout)
    usual, watcher._wake = watcher._wake, Wake()
    usual.set()  # a watcher thread left by an earlier test waits on this one: from now on on ours
    try:
        finisher = threading.Thread(target=lambda: Wake.idle.wait(30) and _finish_by_hand(root, job, 3))
        finisher.start()
        started = time.monotonic()
        assert list(cf.as_completed([job], timeout=60)) == [job]
        assert time.monotonic() - started < 30  # woken, not a pass at the timeout
        finisher.join()
    finally:
        spy, watcher._wake = watcher._wake, usual
        spy.set()  # the watcher waits on the usual event again
    assert job.result() == 3


def test_the_watcher_polls_on_a_shared_filesystem(root_path, parallel, monkeypatch):
    from hither_fs import dirwatch
    monkeypatch.setattr(dirwatch, 'is_local', lambda path: False)  # as on NFS: no inotify, polling only
    monkeypatch.setattr(dirwatch, 'subscribe', None)  # never called
    with hi.Config(job_handler=parallel(1)):
        jobs = [add.run(x=i, y=1) for i in range(3)]
        assert sorted(j.result() for j in cf.as_completed(jobs, timeout=60)) == [1, 2, 3]


def test_a_wait_that_begins_as_the_watcher_lets_its_job_go_still_sees_it_end(root, monkeypatch):
    """In this process, the interleaving forced. The watcher judges a job nobody waits on
    any more (its last wait returned); before it lets the job go, a new wait registers a
    waiter. The job is still watched, so the new wait returns when the job ends."""
    from hither_fs import watch
    from test_faults import QueueOnly
    from test_jobs import _finish_by_hand
    with hi.Config(job_handler=QueueOnly('by-hand')):
        job = add.run(x=1, y=2)
    cf.wait([job], timeout=0.01)  # watched; no waiter left once this returns
    forget, judged, rewaited = watch.Watcher._forget, threading.Event(), threading.Event()

    def forget_after_a_new_wait(self, keys, seen=None):
        if id(job) in keys and seen is not None and not judged.is_set():
            judged.set()  # judged unwaited-for; the next wait registers its waiter now
            assert rewaited.wait(30)
        return forget(self, keys, seen)
    monkeypatch.setattr(watch.Watcher, '_forget', forget_after_a_new_wait)
    watch.watcher._wake.set()
    assert judged.wait(30)
    done = []
    waiting = threading.Thread(target=lambda: done.append(cf.wait([job], timeout=60)))
    waiting.start()
    deadline = time.monotonic() + 30
    while not job._waiters:  # (the standard library's waiter list of the future)
        assert time.monotonic() < deadline
        time.sleep(0.001)
    rewaited.set()
    _finish_by_hand(root, job, 3)
    waiting.join(60)
    assert done and done[0].done == {job} and job.result() == 3

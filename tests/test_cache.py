"""The job cache: hits, keys, versions, force_run, failing jobs, shared caches, in-flight dedup."""

import os
import subprocess
import sys

import numpy as np
import pytest

import hither_fs as hi
from conftest import REPO, TESTS
from jobfuncs import counted, fail


def runs(log):
    return open(log).read().splitlines() if os.path.exists(log) else []


def pipeline(log):
    a = counted.run(x=np.arange(3), log=log)
    b = counted.run(x=a, log=log)
    return counted.run(x=b, log=log)


def test_cached_pipeline_runs_nothing_the_second_time(root_path, parallel, tmp_path):
    log = str(tmp_path / 'log')
    with hi.Config(job_handler=parallel(2), job_cache=hi.JobCache()):
        assert list(pipeline(log).wait(timeout=60)) == [0, 8, 16]
        assert len(runs(log)) == 3
        again = pipeline(log)
        assert again.status == 'finished'  # known before anything runs
        assert list(again.wait()) == [0, 8, 16]
    assert len(runs(log)) == 3


def test_key_covers_arguments_and_version(root_path, tmp_path):
    log = str(tmp_path / 'log')
    with hi.Config(job_cache=hi.JobCache()):
        counted.run(x=1, log=log).wait()
        counted.run(x=1, log=log).wait()
        counted.run(x=2, log=log).wait()
        counted.run(x=np.array([1]), log=log).wait()
        counted.run(x=np.array([1.0]), log=log).wait()  # another dtype, another key
        assert runs(log) == ['1', '2', '[1]', '[1.]']
    with hi.Config(job_cache=hi.JobCache(), force_run=True):
        counted.run(x=1, log=log).wait()
    assert runs(log).count('1') == 2


def test_version_bump_reruns(root_path, tmp_path):
    log = str(tmp_path / 'log')
    code = '''
import sys, hither_fs as hi
@hi.function('versioned', sys.argv[1])
def versioned(log):
    open(log, 'a').write(sys.argv[1] + '\\n')
    return sys.argv[1]
with hi.Config(job_cache=hi.JobCache()):
    print(versioned.run(log=sys.argv[2]).wait())
'''
    outs = [subprocess.run([sys.executable, '-c', code, v, log], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=REPO), check=True).stdout.strip()
            for v in ('0.1.0', '0.1.0', '0.2.0', '0.1.0')]
    assert outs == ['0.1.0', '0.1.0', '0.2.0', '0.1.0']
    assert runs(log) == ['0.1.0', '0.2.0']


def test_errors_are_cached_only_when_asked(root_path):
    with hi.Config(job_cache=hi.JobCache()):
        first = fail.run(message='m1')
        with pytest.raises(ValueError):
            first.wait()
        second = fail.run(message='m1')
        assert second.id != first.id  # not cached: ran again
        with pytest.raises(ValueError):
            second.wait()
    with hi.Config(job_cache=hi.JobCache(), cache_failing=True):
        third = fail.run(message='m2')
        with pytest.raises(ValueError):
            third.wait()
        fourth = fail.run(message='m2')
        assert fourth.id == third.id  # the cached error
        with hi.Config(rerun_failing=True):
            assert fail.run(message='m2').id != third.id


def test_shared_cache_directory_serves_another_root(tmp_path, monkeypatch):
    shared = hi.JobCache(str(tmp_path / 'lab-cache'))
    log = str(tmp_path / 'log')
    with hi.Config(root=str(tmp_path / 'root-a'), job_cache=shared):
        first = counted.run(x=np.arange(4), log=log)
        assert list(first.wait()) == [0, 2, 4, 6]
    with hi.Config(root=str(tmp_path / 'root-b'), job_cache=shared):
        hit = counted.run(x=np.arange(4), log=log)
        assert hit.status == 'finished'
        assert list(hit.wait()) == [0, 2, 4, 6]
        assert hit.root.path.endswith('root-b')
    assert len(runs(log)) == 1


def test_two_submitters_at_once_get_one_execution(root_path, tmp_path):
    """Two processes submit the same job at the same moment: one execution, one job id."""
    log = str(tmp_path / 'log')
    go = str(tmp_path / 'go')
    code = '''
import os, sys, time
import hither_fs as hi
from jobfuncs import counted
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
with hi.Config(job_handler=hi.ParallelJobHandler(1), job_cache=hi.JobCache()):
    job = counted.run(x=21, log=sys.argv[1])
    print(job.id, job.wait(timeout=60))
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    procs = [subprocess.Popen([sys.executable, '-c', code, log, go], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    open(go, 'w').close()
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(outs) == 1, outs
    assert outs.pop().endswith(' 42')
    assert runs(log) == ['21']


def test_force_run_and_a_later_success_replace_cache_entries(root_path, tmp_path):
    log = str(tmp_path / 'log')
    with hi.Config(job_cache=hi.JobCache()):
        first = counted.run(x=7, log=log)
        first.wait()
        with hi.Config(force_run=True):
            forced = counted.run(x=7, log=log)
            forced.wait()
        assert counted.run(x=7, log=log).id == forced.id  # the forced run's result is the cached one now
    assert runs(log) == ['7', '7']


def test_a_success_replaces_a_cached_error(root_path, tmp_path):
    flag = tmp_path / 'fail'
    flag.write_text('yes')
    from jobfuncs import flaky
    with hi.Config(job_cache=hi.JobCache(), cache_failing=True):
        with pytest.raises(RuntimeError):
            flaky.run(flag=str(flag)).wait()
        flag.unlink()
        with hi.Config(rerun_failing=True):
            assert flaky.run(flag=str(flag)).wait() == 'ok'
        assert flaky.run(flag=str(flag)).wait() == 'ok'  # the cached error is gone


def test_a_submitter_that_finds_the_entry_after_winning_the_marker_finishes_its_job(tmp_path, monkeypatch):
    """In this process, the interleaving forced. Submitter W publishes a job and wins the
    key's in-flight marker; submitter L sees that marker and attaches to W's job; then W
    finds the entry, recorded just now. W's job is finished with the cached result (not
    withdrawn), so both get the value."""
    import threading
    from hither_fs import protocol, submit
    from hither_fs.cache import JobCache
    from hither_fs.handlers import DefaultJobHandler
    from hither_fs.root import Root, new_job_id, now_iso
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    root = Root(str(tmp_path / 'root'))
    cache, key = JobCache(), 'ab' + '0' * 38

    def spec_of():
        return {'queue': 'q', 'upstream': [], 'created': now_iso(), 'max_attempts': 3, 'args': {'x': 1},
                'function': {'name': 'f', 'version': '1'}, 'key': key, 'run': 'r', 'cache': {'path': None}}
    done = dict(spec_of(), id=new_job_id())  # the job that computed the key, finished after W and L missed
    protocol.submit_final(root, done, {'status': 'finished', 'result': {'value': 42}, 'queue': 'q',
                                       'submitted': now_iso()})
    assert cache.record(root, key, done, {'value': 42}, is_error=False)
    find, won, attached = JobCache.find, threading.Event(), threading.Event()

    def find_after_an_attach(self, *args, **kwargs):
        if threading.current_thread().name == 'W':
            won.set()  # W holds the marker: L looks now
            assert attached.wait(30)
        return find(self, *args, **kwargs)
    monkeypatch.setattr(JobCache, 'find', find_after_an_attach)
    jobs = {}
    w = threading.Thread(name='W', target=lambda: jobs.update(W=submit._create_once(
        root, cache, spec_of(), DefaultJobHandler())))
    w.start()
    assert won.wait(30)
    jobs['L'] = submit._create_once(root, cache, spec_of(), DefaultJobHandler())
    attached.set()
    w.join(30)
    assert jobs['L'].id == jobs['W'].id  # attached to W's job ...
    assert jobs['W'].wait(timeout=30) == 42 and jobs['L'].wait(timeout=30) == 42  # ... which finished from the cache
    state = protocol.read_state(root, jobs['W'].id)
    assert state['cached'] is True and state['from_cache']['job_id'] == done['id']
    assert cache.in_flight(root, key)[1] is None  # the marker is released


def test_a_job_finished_from_a_lab_cache_in_the_marker_race_gets_the_results_blobs(tmp_path, monkeypatch):
    """In this process. The submitter in another root misses the lab cache at first (the
    entry is written just after its look), wins the key's marker and then finds the entry:
    its job is finished from it, with the result's arrays copied into this root's store."""
    from hither_fs import submit
    from hither_fs.cache import JobCache
    lab, log = hi.JobCache(str(tmp_path / 'lab')), str(tmp_path / 'log')
    with hi.Config(root=str(tmp_path / 'a'), job_cache=lab):
        assert list(counted.run(x=np.arange(3), log=log).wait()) == [0, 2, 4]
    racing, find, create_once = [], JobCache.find, submit._create_once
    monkeypatch.setattr(JobCache, 'find', lambda self, *a, **k: find(self, *a, **k) if racing else None)
    monkeypatch.setattr(submit, '_create_once', lambda *a, **k: racing.append(1) or create_once(*a, **k))
    with hi.Config(root=str(tmp_path / 'b'), job_cache=lab):
        job = counted.run(x=np.arange(3), log=log)
        assert racing and job.status == 'finished'
        assert list(job.wait(timeout=30)) == [0, 2, 4]

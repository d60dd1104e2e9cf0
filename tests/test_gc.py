"""``hither-fs gc``, ``JobCache.reduce_size`` and the default retention: what goes, what stays.

Jobs are real (run by the in-process handler, or queued for a real worker); a job or
blob is made "old" the way time would make it: its files' mtimes are set back with
``os.utime``. Every test compares what gc says it frees with what ``du`` then counts.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import hither_fs as hi
from conftest import REPO, TESTS
from hither_fs import gc, protocol
from hither_fs.runtime.layout import host_label
from hither_fs.usage import blob_keys, disk_usage
from jobfuncs import add, echo, fail
from test_faults import QueueOnly, start_worker, stop

DAY = 86400.0


def age(job, days):
    """Make a final job look as if it ended ``days`` ago (and its blobs as if stored then)."""
    then = time.time() - days * DAY
    os.utime(os.path.join(job.directory, 'state.json'), (then, then))
    for key in blobs_of(job):
        os.utime(os.path.join(job.root.layout.store, key), (then, then))


def blobs_of(job):
    state = job.get_state()
    keys = blob_keys(job.spec['args'])
    if state['status'] == 'finished':
        keys |= blob_keys(state['result']['value'])
    return keys


def present(root, key):
    return os.path.exists(os.path.join(root.layout.store, key))


def run_cli(root, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.run([sys.executable, '-m', 'hither_fs', '--root', root.path] + list(args), env=env,
                          capture_output=True, text=True, timeout=120)


def test_gc_by_age_frees_what_it_says_and_keeps_what_live_jobs_need(root):
    shared = np.arange(1000.0)
    with hi.Config(label='old'):
        old_shared = echo.run(x=shared)            # its argument blob is also a queued job's
        old_alone = echo.run(x=np.arange(5.0))     # nothing else needs it
        upstream = add.run(x=1, y=2)               # a pending job waits for... a live upstream; see below
        failed = fail.run(message='boom')
        hi.wait()
    young = add.run(x=3, y=4)
    young.wait()
    for job in (old_shared, old_alone, upstream, failed):
        age(job, 40)
    with hi.Config(job_handler=QueueOnly('gc-live')):
        live = echo.run(x=shared)                  # queued: needs the shared blob
        waits = add.run(x=upstream, y=10)          # queued: will read the old upstream's result
    assert live.status == 'queued' and waits.status == 'queued'
    alone_blobs = blobs_of(old_alone) - blobs_of(live)
    before = disk_usage(root).total

    plan = gc.collect(root, gc.Selection(older_than=30 * DAY))

    assert sorted(plan.jobs) == sorted([old_shared.id, old_alone.id, failed.id])
    assert plan.kept == {'upstream of a live job': 1}
    assert not os.path.exists(old_alone.directory) and os.path.isdir(upstream.directory)
    assert all(not present(root, k) for k in alone_blobs) and all(present(root, k) for k in blobs_of(live))
    after = disk_usage(root).total
    assert (before.bytes - after.bytes, before.inodes - after.inodes) == (plan.freed.bytes, plan.freed.inodes)
    # what the live jobs need is all there: a real worker runs them
    w = start_worker(root, 'gc-live')
    try:
        assert np.array_equal(live.wait(timeout=60), shared)
        assert waits.wait(timeout=60) == 13
    finally:
        stop([w])
    assert young.wait() == 7
    assert [f.path for f in hi_fsck(root) if f.damage] == []


def hi_fsck(root):
    from hither_fs.fsck import fsck
    return fsck(root)


def test_gc_to_a_budget_removes_the_oldest_first(root):
    jobs = [echo.run(x=np.full(2000, float(i))) for i in range(8)]
    for i, job in enumerate(jobs):
        age(job, 10 - i)  # jobs[0] is the oldest
    total = disk_usage(root).total
    budget = total.inodes - 10  # each job is 3 inodes and 2 blobs: four jobs must go
    plan = gc.collect(root, gc.Selection(max_inodes=budget))
    assert plan.jobs == [j.id for j in jobs[:len(plan.jobs)]]  # oldest first, and no more than needed
    assert disk_usage(root).total.inodes <= budget
    assert len(plan.jobs) < len(jobs) and all(os.path.isdir(j.directory) for j in jobs[len(plan.jobs):])
    plan = gc.collect(root, gc.Selection(max_bytes=0))  # cannot be met: everything final goes, a note says so
    assert 'the budget cannot be met by removing final jobs' in plan.notes


def test_filters_grace_and_dry_run(root):
    with hi.Config(label='keep'):
        a = add.run(x=1, y=1)
    with hi.Config(label='drop'):
        b = add.run(x=2, y=2)
        c = echo.run(x='c')
    d = fail.run(message='x')
    hi.wait()
    for job in (a, b, c, d):
        age(job, 2)
    assert gc.collect(root, gc.Selection(labels={'drop'}), dry_run=True).jobs != []
    assert all(os.path.isdir(j.directory) for j in (a, b, c, d))  # a dry run removes nothing
    assert sorted(gc.collect(root, gc.Selection(labels={'drop'}, functions={'add'})).jobs) == [b.id]
    assert gc.collect(root, gc.Selection(statuses={'error'})).jobs == [d.id]
    assert gc.collect(root, gc.Selection(runs={a.spec['run']}, grace=3 * DAY)).jobs == []  # all within grace
    assert gc.collect(root, gc.Selection(runs={a.spec['run']})).jobs == sorted([a.id, c.id], key=[a.id, c.id].index)
    with pytest.raises(ValueError, match='say what to remove'):
        gc.Selection()
    with pytest.raises(ValueError, match='only final jobs'):
        gc.Selection(statuses={'running'})


def test_cli_gc_and_du(root):
    jobs = [echo.run(x=np.arange(100.0) + i) for i in range(3)]
    for job in jobs:
        age(job, 31)
    proc = run_cli(root, 'gc', '--older-than', '30d', '--dry-run')
    assert proc.returncode == 0 and 'would remove 3 jobs' in proc.stdout, proc.stdout + proc.stderr
    assert all(os.path.isdir(j.directory) for j in jobs)
    proc = run_cli(root, 'gc', '--older-than', '30d', '--list')
    assert proc.returncode == 0 and 'removed 3 jobs' in proc.stdout, proc.stdout + proc.stderr
    assert all('job   ' + j.id in proc.stdout for j in jobs)
    proc = run_cli(root, 'gc')
    assert proc.returncode == 2 and 'say what to remove' in proc.stderr and 'Traceback' not in proc.stderr
    proc = run_cli(root, 'gc', '--older-than', 'soon')
    assert proc.returncode == 2 and "not an age: 'soon'" in proc.stderr
    for option, value, said in (('--grace', 'nan', "not an age: 'nan'"), ('--max-bytes', 'inf', "not a size: 'inf'")):
        proc = run_cli(root, 'gc', option, value, '--older-than', '30d')
        assert proc.returncode == 2 and said in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr


def test_cli_gc_names_a_run_as_ls_does(root):
    """``--run`` takes a unique prefix of a run or its process id, as ``ls`` does; a run the
    root does not have is an error, not "removed 0 jobs"."""
    job = add.run(x=1, y=2)
    job.wait()
    age(job, 2)
    run = job.spec['run']
    proc = run_cli(root, 'gc', '--run', 'no-such-run')
    assert proc.returncode == 2 and "no run 'no-such-run' in the root" in proc.stderr, proc.stderr
    proc = run_cli(root, 'gc', '--run', run.rsplit('-', 1)[1], '--dry-run')  # its process id
    assert proc.returncode == 0 and 'would remove 1 jobs' in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli(root, 'gc', '--run', run[:10])
    assert proc.returncode == 0 and 'removed 1 jobs' in proc.stdout and not os.path.exists(job.directory)


def test_cache_entries_stay_unless_asked_and_keep_their_blobs(root):
    cache = hi.JobCache()
    with hi.Config(job_cache=cache):
        job = echo.run(x=np.arange(50.0))
        job.wait()
    age(job, 40)
    entry = os.path.join(root.layout.cache, job.spec['key'][:2], job.spec['key'] + '.json')
    os.utime(entry, (time.time() - 40 * DAY,) * 2)
    result_blobs = blob_keys(job.get_state()['result']['value'])
    assert gc.collect(root, gc.Selection(older_than=30 * DAY)).jobs == [job.id]
    assert os.path.exists(entry) and all(present(root, k) for k in result_blobs)
    with hi.Config(job_cache=cache):  # a hit: the entry's result, though its job is gone
        assert np.array_equal(echo.run(x=np.arange(50.0)).wait(), np.arange(50.0))
    for key in result_blobs:  # the hit marked them as used just now: make them old again
        os.utime(os.path.join(root.layout.store, key), (time.time() - 40 * DAY,) * 2)
    plan = gc.collect(root, gc.Selection(older_than=30 * DAY, cache=True, functions={'echo'}))
    assert plan.cache_entries == [os.path.relpath(entry, root.layout.cache)]
    assert not os.path.exists(entry)


def test_job_cache_reduce_size(tmp_path, root):
    cache = hi.JobCache(str(tmp_path / 'labcache'))
    with hi.Config(job_cache=cache):
        jobs = [echo.run(x=np.full(1000, float(i))) for i in range(6)]
        hi.wait()
    entries = sorted(gc._scan(cache.path), key=lambda e: e[0])
    assert len(entries) == 6
    for i, job in enumerate(jobs):  # job i's entry (and its blob) is 9.5 - i days old
        then = time.time() - (9.5 - i) * DAY
        os.utime(os.path.join(cache.path, job.spec['key'][:2], job.spec['key'] + '.json'), (then, then))
        for key in blob_keys(job.get_state()['result']['value']):
            os.utime(os.path.join(cache.path, 'store', key), (then, then))
    assert cache.reduce_size(items_limit=4) == (2, 2)
    assert cache.reduce_size(age_limit='7d') == (1, 1)  # the 7.5-day-old one
    assert cache.reduce_size(bytes_limit='1') == (3, 3)
    assert gc._scan(cache.path) == [] and gc._scan(os.path.join(cache.path, 'store')) == []


def test_a_blob_stored_again_while_gc_sweeps_it_is_put_back(root):
    key_value = np.arange(7.0)
    job = echo.run(x=key_value)
    job.wait()
    age(job, 40)
    [key] = blob_keys(job.spec['args'])
    path = os.path.join(root.layout.store, key)
    judged = time.time() - 3600
    root.store.put_array(key_value)  # a submitter stores it again after gc judged it old
    assert gc.sweep_blob(path, judged) is False and os.path.exists(path)
    os.utime(path, (judged - 10,) * 2)
    assert gc.sweep_blob(path, judged) is True and not os.path.exists(path)


def test_a_removed_upstream_is_put_back_if_a_job_started_waiting_for_it(root):
    up = add.run(x=1, y=1)
    up.wait()
    with hi.Config(job_handler=QueueOnly('gc-wait')):
        down = add.run(x=up, y=1)
    assert down.status == 'queued'
    assert gc.remove_job(root, up.id) is False and os.path.isdir(up.directory)
    assert protocol.read_state(root, up.id)['status'] == 'finished'
    down.cancel()
    assert gc.remove_job(root, up.id) is True and not os.path.exists(up.directory)
    with hi.Config(job_handler=QueueOnly('gc-wait')):
        late = add.run(x=up, y=1)  # a job naming a removed job as its upstream fails, saying so
    with pytest.raises(hi.UpstreamJobError, match='is not in the root'):
        late.wait(timeout=10)
    assert not os.path.exists(up.directory)  # and its directory is not made again


def test_parse_size_and_age():
    assert gc.parse_size('10G') == 10 ** 10 and gc.parse_size('500M') == 5 * 10 ** 8 and gc.parse_size(7) == 7
    assert gc.parse_size('2.5kB') == 2500
    assert gc.parse_age('30d') == 30 * DAY and gc.parse_age('90m') == 5400 and gc.parse_age(5) == 5.0
    for bad in ('ten', '', 'G', 'inf', '1e400', 'nanG'):
        with pytest.raises(ValueError, match='not a size'):
            gc.parse_size(bad)
    for bad in ('nan', 'infd', float('nan'), float('inf')):  # nan would pass every "at least" check
        with pytest.raises(ValueError, match='not an age'):
            gc.parse_age(bad)


def test_a_job_whose_spec_cannot_be_read_stops_the_blob_sweep(root):
    """Its blobs are unknown (its result is still in its readable state; its arguments are
    needed again once the spec is mended): gc removes the other old jobs, but no blob."""
    damaged, other = echo.run(x=np.arange(10.0)), echo.run(x=np.arange(20.0))
    hi.wait()
    for job in (damaged, other):
        age(job, 40)
    spec = os.path.join(damaged.directory, 'spec.json')
    with open(spec) as f:
        text = f.read()
    with open(spec, 'w') as f:
        f.write(text[:20])  # cut short
    plan = gc.collect(root, gc.Selection(older_than=30 * DAY))
    assert plan.jobs == [other.id] and plan.blobs == []
    assert plan.notes == ["no blob is removed while 1 job(s) have a spec that cannot be read "
                          "(hither-fs fsck lists them)"]
    assert os.path.isdir(damaged.directory) and all(present(root, key) for key in blobs_of(damaged))
    assert list(damaged.get_result()) == list(np.arange(10.0))


def test_gc_in_a_loop_during_a_chaos_run(root):
    """gc runs again and again while a new batch is submitted and run by workers that are
    killed at random. The new batch reuses the arrays of an old batch (whose jobs gc
    removes) and builds pipelines; every new job must finish with the right result, the
    old jobs and the blobs only they used must go, and nothing else."""
    import random
    import signal
    import threading
    q = 'gc-chaos'
    shared = [np.arange(300.0) * k for k in range(10)]
    with hi.Config(label='old'):
        old = [echo.run(x=shared[i % 10]) for i in range(30)] + [echo.run(x=np.arange(40.0) + 1000 + i)
                                                                 for i in range(20)]
        hi.wait()
    for job in old:
        age(job, 40)
    only_old = set().union(*(blobs_of(j) for j in old[30:]))
    new, done_submitting, errors, rounds = [], threading.Event(), [], [0]

    def submit():
        try:
            # (a lost job goes to the front of the queue, where a fresh worker - slowest on its first
            # job - may take it and be killed too: this test is about gc, not about the attempt limit)
            with hi.Config(job_handler=QueueOnly(q), max_attempts=20):
                for i in range(120):
                    first = echo.run(x=shared[i % 10])
                    new.append((first, shared[i % 10]))
                    if i % 3 == 0:
                        new.append((add.run(x=first, y=i), shared[i % 10] + i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done_submitting.set()

    def collect():
        while not (done_submitting.is_set() and all(j.is_done() for j, _ in list(new))):
            try:
                gc.collect(root, gc.Selection(older_than=30 * DAY, grace=600))
                rounds[0] += 1
            except Exception as exc:
                errors.append(exc)
                return

    workers = [start_worker(root, q) for _ in range(3)]
    threads = [threading.Thread(target=submit), threading.Thread(target=collect)]
    for t in threads:
        t.start()
    rng, kills = random.Random(99), 0
    try:
        deadline = time.monotonic() + 300
        while threads[1].is_alive():
            assert time.monotonic() < deadline, 'chaos run did not finish'
            time.sleep(rng.uniform(0.1, 0.4))
            k = rng.randrange(len(workers))
            workers[k].send_signal(signal.SIGKILL)
            workers[k].wait()
            kills += 1
            workers[k] = start_worker(root, q)
    finally:
        for t in threads:
            t.join(60)
        stop(workers)
    assert errors == [] and kills >= 3 and rounds[0] >= 3
    for job, expected in new:
        assert np.array_equal(job.get_result(), expected), job.id
    assert all(not os.path.exists(j.directory) for j in old)
    assert all(not present(root, k) for k in only_old)
    assert all(present(root, k) for k in set().union(*(blobs_of(j) for j, _ in new)))


def test_default_retention_removes_old_logs_and_dead_workers_never_results(root, tmp_path):
    job = add.run(x=2, y=3)
    job.wait()
    logs = root.layout.logs
    old_log, new_log = os.path.join(logs, '2020-01-01', 'w.log'), os.path.join(logs, 'slurm', 'new.log')
    for path in (old_log, new_log):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write('log\n')
    long_ago = time.time() - 40 * DAY
    os.utime(old_log, (long_ago, long_ago))
    os.utime(os.path.dirname(old_log), (long_ago, long_ago))
    dead, alive = root.layout.worker_dir('w-othernode-1-aaaaaa'), root.layout.worker_dir('w-othernode-2-bbbbbb')
    for wdir, when in ((dead, time.time() - 8 * DAY), (alive, time.time())):
        os.makedirs(wdir)
        with open(os.path.join(wdir, 'heartbeat.json'), 'w') as f:
            f.write('{}')
        os.utime(os.path.join(wdir, 'heartbeat.json'), (when, when))
    os.utime(os.path.join(job.directory, 'state.json'), (long_ago, long_ago))
    # a real worker applies it as it starts (and removes the scratch a killed worker left on this node)
    tmpdir = tmp_path / 'tmp'
    scratch = tmpdir / 'hither_fs-{}'.format(os.getuid()) / 'w-{}-999999999-abcdef'.format(host_label())
    scratch.mkdir(parents=True)
    (scratch / 'left.txt').write_text('debris')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), TMPDIR=str(tmpdir))
    proc = subprocess.run([sys.executable, '-m', 'hither_fs', 'worker', '--root', root.path, '--queue', 'none',
                           '--idle-timeout', '0.2', '--log-level', 'info'], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(old_log) and not os.path.exists(os.path.dirname(old_log)) and os.path.exists(new_log)
    assert not os.path.exists(dead) and os.path.exists(alive)
    assert not scratch.exists()
    assert job.get_result() == 5  # results are never touched
    os.utime(new_log, (long_ago, long_ago))
    assert gc.apply_retention(root) == []  # at most once a day
    assert gc.apply_retention(root, force=True) == [new_log]


def test_a_scratch_directory_someone_else_could_use_is_refused(root, tmp_path):
    tmpdir = tmp_path / 'tmp'
    tmpdir.mkdir()
    os.symlink(str(tmp_path), str(tmpdir / 'hither_fs-{}'.format(os.getuid())))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), TMPDIR=str(tmpdir))
    proc = subprocess.run([sys.executable, '-m', 'hither_fs', 'worker', '--root', root.path, '--queue', 'none',
                           '--idle-timeout', '0.2'], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'refusing the scratch directory' in proc.stderr and 'symbolic link' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_a_cache_hit_makes_its_old_job_young_again(root, tmp_path):
    """A hit answered with an old job of this root (or with an old blob of a lab cache)
    makes it young, so a gc running meanwhile keeps it; a lab cache's hit used as an input
    links its blob into the root, young; a live job whose state cannot be read keeps its
    argument blobs."""
    cache = hi.JobCache()
    with hi.Config(job_cache=cache):
        job = echo.run(x=np.arange(9.0))
        job.wait()
    age(job, 40)
    with hi.Config(job_cache=cache):
        again = echo.run(x=np.arange(9.0))
    assert again.id == job.id  # the original job answers the hit...
    assert gc.collect(root, gc.Selection(older_than=30 * DAY)).jobs == []  # ...and is young again
    assert np.array_equal(again.wait(), np.arange(9.0))
    lab = hi.JobCache(str(tmp_path / 'lab'))
    with hi.Config(job_cache=lab):
        add.run(x=np.arange(4.0), y=1.0).wait()
    for dirpath, _, names in os.walk(os.path.join(lab.path, 'store')):
        for name in names:
            os.utime(os.path.join(dirpath, name), (time.time() - 40 * DAY,) * 2)
    other = hi.Root(str(tmp_path / 'other'))
    with hi.Config(root=other.path, job_cache=lab):
        hit = add.run(x=np.arange(4.0), y=1.0)
    [key] = blob_keys(hit.get_state()['result']['value'])
    assert time.time() - os.stat(os.path.join(lab.path, 'store', key)).st_mtime < 600  # young in the lab cache
    assert not present(other, key)  # read from there: a hit writes nothing in the root
    with hi.Config(root=other.path, job_cache=lab):
        assert np.array_equal(echo.run(x=hit).wait(), np.arange(4.0) + 1)  # an input: recorded in the root
    assert time.time() - os.stat(os.path.join(other.layout.store, key)).st_mtime < 600  # linked, and young
    with hi.Config(job_handler=QueueOnly('gc-damaged')):
        live = echo.run(x=np.arange(6.0))
    [arg] = blobs_of(live)
    os.utime(os.path.join(root.layout.store, arg), (time.time() - 40 * DAY,) * 2)
    state = os.path.join(live.directory, 'state.json')
    os.unlink(state)
    os.mkfifo(state)
    gc.collect(root, gc.Selection(older_than=30 * DAY))
    assert present(root, arg) and os.path.isdir(live.directory)


def test_selections_gc_refuses():
    with pytest.raises(ValueError, match='grace period must be at least 10 minutes'):
        gc.Selection(older_than=0, grace=60)
    with pytest.raises(ValueError, match='--cache removes cache entries by --function and --older-than only'):
        gc.Selection(labels={'x'}, cache=True)


def _finished_job(root):
    """In this process: a job of ``root`` that ran and finished (its spec)."""
    from hither_fs.queue import iter_tickets
    from hither_fs.root import new_job_id, now_iso
    spec = {'id': new_job_id(), 'queue': 'q', 'upstream': [], 'created': now_iso(), 'max_attempts': 3,
            'function': {'name': 'f', 'version': '1'}, 'key': 'k', 'run': 'r'}
    protocol.submit(root, spec)
    [path] = [p for p, n in iter_tickets(root.layout, 'q') if spec['id'] in n]
    protocol.commit(root, protocol.claim(root, path, 'w-a', spec), protocol.Outcome(result={'value': 1}))
    return spec


def test_a_job_handed_out_again_is_never_set_aside_and_a_job_set_aside_makes_its_waiters_wait(tmp_path, monkeypatch):
    """In this process. gc renames a job aside before it removes it for good: a job handed
    out again (a cache hit) since gc's cutoff is kept without that; and a job that waits
    for one set aside right now is left pending (gc may put it back), not failed."""
    import threading
    from hither_fs.root import Root, new_job_id, now_iso
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    root = Root(str(tmp_path / 'root'))
    used, old = _finished_job(root), _finished_job(root)
    for job in (used, old):  # finished long before gc's cutoff
        os.utime(root.layout.state_file(job['id']), (time.time() - 3600,) * 2)
    cutoff = time.time() - 60
    assert protocol.mark_used(root, used['id'])
    renames = []
    monkeypatch.setattr(gc.os, 'rename', lambda a, b, real=os.rename: renames.append(a) or real(a, b))
    assert gc.remove_job(root, used['id'], young_after=cutoff) is False and renames == []
    aside, go, out = threading.Event(), threading.Event(), {}

    def pausing_utime(path, *args, real=os.utime, **kwargs):  # gc: just after the rename aside
        aside.set()
        assert go.wait(30)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(gc.os, 'utime', pausing_utime)
    gc_thread = threading.Thread(target=lambda: out.update(removed=gc.remove_job(root, old['id'], young_after=cutoff)))
    gc_thread.start()
    assert aside.wait(30)
    down = {'id': new_job_id(), 'queue': 'q', 'upstream': [old['id']], 'created': now_iso(), 'max_attempts': 3,
            'function': {'name': 'f', 'version': '1'}, 'key': 'k2', 'run': 'r'}
    protocol.submit(root, down)
    assert protocol.read_state(root, down['id'])['status'] == 'pending'
    go.set()
    gc_thread.join(30)
    assert out['removed'] is True  # removed for good: now its waiter fails, saying so
    assert protocol.promote(root, down['id']) == protocol.Status.ERROR
    assert 'is not in the root' in protocol.read_state(root, down['id'])['error']['message']


def test_gc_leaves_a_job_put_in_again_while_it_was_set_aside(tmp_path, monkeypatch):
    """In this process. A lab cache's hit puts in a job it finds missing (CacheHit.keep):
    if gc set that job aside and must put it back, the one put in stays and gc goes on."""
    import threading
    from hither_fs.root import Root
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    root = Root(str(tmp_path / 'root'))
    job = _finished_job(root)
    os.utime(root.layout.state_file(job['id']), (time.time() - 3600,) * 2)
    aside, go, out, real_utime = threading.Event(), threading.Event(), {}, os.utime

    def pausing_utime(path, *args, real=os.utime, **kwargs):  # gc: just after the rename aside (gc.os is os)
        out['aside'] = path
        aside.set()
        assert go.wait(30)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(gc.os, 'utime', pausing_utime)
    gc_thread = threading.Thread(target=lambda: out.update(removed=gc.remove_job(root, job['id'],
                                                                                 young_after=time.time() - 60)))
    gc_thread.start()
    assert aside.wait(30)
    protocol.submit_final(root, job, {'status': 'finished', 'result': {'value': 1}, 'queue': 'q'})  # put in again
    real_utime(os.path.join(out['aside'], 'state.json'))  # and handed out: gc puts its copy back
    go.set()
    gc_thread.join(30)
    assert out['removed'] is False and protocol.read_state(root, job['id'])['status'] == 'finished'
    assert not os.path.exists(out['aside'])

"""``hither-fs fsck`` sees the whole picture, always finishes, and never judges by a wrong clock.

Roots are damaged the way hands, crashes and bad copies damage them (a blob deleted, a
cache entry left pointing at nothing, records that disagree, a killed submitter's temp
file in ``store/``); ``fsck`` runs as a real process with a timeout, so a hang fails.
The clock test runs ``fsck --repair`` under ``faketime`` - a real process whose clock is
five hours ahead of the file system's - next to live writers of another host.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import hither_fs as hi
from conftest import REPO, TESTS, missing_infrastructure
from hither_fs import protocol
from hither_fs.fsck import fsck
from hither_fs.queue import iter_tickets
from jobfuncs import add, echo

HOUR = 3600.0


def run_fsck(root, *args, prefix=(), timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.run(list(prefix) + [sys.executable, '-m', 'hither_fs', '--root', root.path, 'fsck'] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert 'Traceback' not in proc.stderr, proc.stderr
    return proc


def problems(root, repair=False):
    return {(f.path, f.problem) for f in fsck(root, repair=repair)}


def test_fsck_finds_a_deleted_argument_blob_and_an_orphan_cache_entry(root):
    with hi.Config(job_cache=hi.JobCache()):
        job = echo.run(x=np.arange(10.0))
        cached = echo.run(x=np.arange(3.0))
        hi.wait()
    assert problems(root) == set()
    [arg] = protocol.read_spec(root, job.id)['args'].values()
    os.unlink(root.store.blob_path(arg['sha1'], '.npy'))
    result = cached.get_state()['result']['value']
    os.unlink(root.store.blob_path(result['sha1'], '.npy'))
    entry = os.path.join(root.layout.cache, cached.spec['key'][:2], cached.spec['key'] + '.json')
    found = fsck(root)
    by_path = {f.path: f for f in found}
    assert 'an argument refers to a bad blob' in by_path[os.path.join(job.directory, 'spec.json')].problem
    assert 'missing from the store' in by_path[os.path.join(job.directory, 'spec.json')].problem
    assert 'cache entry whose result refers to a bad blob' in by_path[entry].problem
    assert all(f.damage for f in found)
    proc = run_fsck(root, '--repair')
    assert proc.returncode == 1 and 'left as they are' in proc.stdout, proc.stdout
    assert not os.path.exists(entry)  # a cache entry that could only ever miss is removed: no guessing
    assert os.path.isdir(job.directory)  # a job is only reported


def test_a_pipeline_on_jobs_that_already_ended_leaves_nothing_for_fsck(root):
    from test_faults import QueueOnly
    first = add.run(x=1, y=1)
    first.wait()
    with hi.Config(job_handler=QueueOnly('fsck-waits')):
        waiting = add.run(x=first, y=2)  # queued, not run: its marker keeps `first` from gc, and is no problem
    assert waiting.status == 'queued' and fsck(root) == []
    second = add.run(x=first, y=1)  # its upstream had ended: queued at once, run here
    assert second.wait() == 3
    # once final, a job's marker protects nothing: gone with it (the waiting job's stays)
    assert os.listdir(root.layout.downstream_dir(first.id)) == [waiting.id]
    assert fsck(root) == []


def test_fsck_reports_records_that_disagree(root):
    a, b, c = add.run(x=1, y=1), add.run(x=2, y=2), add.run(x=3, y=3)
    shutil.copy(os.path.join(b.directory, 'spec.json'), os.path.join(a.directory, 'spec.json'))
    with open(os.path.join(c.directory, 'state.json')) as f:
        state = json.load(f)
    state['status'] = 'done'
    with open(os.path.join(c.directory, 'state.json'), 'w') as f:
        json.dump(state, f)
    found = problems(root)
    assert (a.directory, "spec.json is the spec of job {!r}, not of job {}".format(b.id, a.id)) in found
    assert any(p == c.directory and "status 'done'" in msg for p, msg in found)


def test_stale_in_flight_markers_are_removed_by_repair(root):
    with hi.Config(job_cache=hi.JobCache()):
        job = add.run(x=5, y=5)
        job.wait()
    marker = os.path.join(root.layout.cache, job.spec['key'][:2], job.spec['key'] + '.inflight.0')
    with open(marker, 'w') as f:  # left by a submitter killed before its job's outcome was recorded
        json.dump({'job_id': job.id, 'root': root.path}, f)
    os.utime(marker, (time.time() - HOUR,) * 2)
    assert any('in-flight marker' in msg for _, msg in problems(root))
    fsck(root, repair=True)
    assert not os.path.exists(marker) and problems(root) == set()


def test_fsck_finishes_on_every_damaged_root(root, tmp_path):
    job = echo.run(x=np.arange(4.0))
    job.wait()
    store = root.layout.store
    # a killed submitter's temp file at the top of store/ (once: "Not a directory")
    with open(os.path.join(store, '.incoming.tmp-somehost.4242.0123abcd'), 'w') as f:
        f.write('partial')
    shard = os.path.join(store, 'cd')
    os.makedirs(shard, exist_ok=True)
    os.mkfifo(os.path.join(shard, 'cd' + '1' * 38))
    os.symlink('/dev/zero', os.path.join(shard, 'cd' + '2' * 38 + '.npy'))
    with open(os.path.join(root.layout.jobs, 'ee'), 'w') as f:
        f.write('a file where a shard belongs')
    os.mkfifo(os.path.join(root.layout.running, 'ffffffffffffffff.0.1.w-x-1-abc'))
    os.makedirs(os.path.join(root.layout.cache, 'ab'), exist_ok=True)
    os.mkfifo(os.path.join(root.layout.cache, 'ab', 'ab' + '3' * 38 + '.json'))
    with open(os.path.join(job.directory, 'state.json'), 'w') as f:
        f.write('{"status": ' + '[' * 100000 + ']' * 100000 + '}')
    big = add.run(x=1, y=1)
    with open(os.path.join(big.directory, 'spec.json'), 'r+') as f:
        f.truncate(3 << 30)  # 3 GB (sparse): refused by its size, never read
    os.mkdir(os.path.join(shard, 'cd' + '4' * 38))  # a directory where a blob belongs
    deep = root.layout.logs
    for _ in range(1200):  # deeper than Python's recursion limit
        deep = os.path.join(deep, 'd')
        os.mkdir(deep)
    try:
        for args in ((), ('--repair',)):
            proc = run_fsck(root, *args)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert 'is not a regular file' in proc.stdout or 'not a regular file' in proc.stdout
        out = run_fsck(root).stdout
        assert 'not valid JSON' in out and 'not a shard directory' in out and 'more than the' in out
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
        for command in (['gc', '--older-than', '0', '--grace', '10m'], ['du']):
            proc = subprocess.run([sys.executable, '-m', 'hither_fs', '--root', root.path] + command, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode in (0, 1) and 'Traceback' not in proc.stderr, proc.stderr
    finally:
        while deep != root.layout.logs:  # (pytest's own cleanup of old test directories recurses)
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def _live_writers_of_another_host(root):
    """Files that a live worker on node 'othernode' has just made: a temporary file in the
    store and in a job's directory, its heartbeat, a token it has taken and a claim."""
    job = add.run(x=1, y=2)
    job.wait()
    with hi.Config(job_handler=_Queue('clock')):
        queued = add.run(x=2, y=2)
    worker = 'w-othernode-4242-abcdef'
    hb = root.layout.heartbeat(worker)
    os.makedirs(os.path.dirname(hb))
    with open(hb, 'w') as f:
        json.dump({'id': worker, 'host': 'othernode', 'pid': 4242, 'beat': 1}, f)
    [(ticket, _)] = list(iter_tickets(root.layout, 'clock'))
    taken = protocol.taken_path(root, worker, protocol.Token(queued.id).name)
    os.rename(ticket, taken)
    paths = [os.path.join(root.layout.store, '.incoming.tmp-othernode.4242.0123abcd'),
             os.path.join(job.directory, '.stdout.txt.g0a1.tmp-othernode.4242.0123abcd'),
             hb, taken]
    for path in paths[:2]:
        with open(path, 'w') as f:
            f.write('being written')
    return paths


class _Queue(hi.JobHandler):
    def __init__(self, name):
        self.name = name

    def queue_for(self, root):
        return self.name


def test_repair_judges_other_hosts_files_by_the_file_systems_clock(root, monkeypatch):
    """In process, with this process's clock faked five hours ahead (a fake clock: the
    real-process version below uses faketime)."""
    live = _live_writers_of_another_host(root)
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() + 5 * HOUR)
    fsck(root, repair=True)
    assert [p for p in live if not os.path.lexists(p)] == []


def test_repair_on_a_node_whose_clock_is_hours_ahead_deletes_nothing_a_live_writer_needs(root):
    if shutil.which('faketime') is None:
        missing_infrastructure('faketime is not installed (tests/run.sh installs it)')
    live = _live_writers_of_another_host(root)
    proc = run_fsck(root, '--repair', prefix=['faketime', '-f', '+5h'])
    assert [p for p in live if not os.path.lexists(p)] == [], proc.stdout
    # the same files, really two hours old by the file system's clock: now they go
    old = time.time() - 2 * HOUR
    for path in live:
        os.utime(path, (old, old))
    run_fsck(root, '--repair', prefix=['faketime', '-f', '+5h'])
    assert [p for p in live if os.path.lexists(p)] == []


def test_live_workers_are_judged_on_the_file_systems_clock(root, monkeypatch):
    """A submitter whose clock is hours ahead (a fake clock: time.time patched) still sees a
    worker that beat just now as alive, so it does not start allocations it does not need."""
    from hither_fs.runtime import files
    from hither_fs.slurm import live_workers
    worker = 'w-othernode-4242-abcdef'
    os.makedirs(root.layout.worker_dir(worker))
    with open(root.layout.heartbeat(worker), 'w') as f:
        json.dump({'id': worker, 'queues': ['slurm']}, f)
    real = time.time
    monkeypatch.setattr(files, '_offsets', {})
    monkeypatch.setattr(time, 'time', lambda: real() + 5 * HOUR)
    assert [hb['id'] for hb in live_workers(root, max_age=60)] == [worker]
    monkeypatch.setattr(time, 'time', lambda: real() - 5 * HOUR)  # and one behind never sees the dead as alive
    monkeypatch.setattr(files, '_offsets', {})
    os.utime(root.layout.heartbeat(worker), (real() - 120, real() - 120))
    assert live_workers(root, max_age=60) == []

"""The bus across several Slurm nodes that share nothing but the root.

tests/run.sh starts slurm/cluster.sh with three nodes (HITHER_FS_SLURM_NODES=3):
each node's slurmd, and every job on it, runs in a mount and UTS namespace of
its own, with its own host name and its own FUSE (bindfs) view of the shared
directory HITHER_FS_SHARED_DIR - so file locks do not cross nodes, attributes
and names are cached per node, and no node can judge another's processes by
pid. The roots of these tests live in that directory; the test process (the
login node) sees it through a mount of its own.

Each test prints what it counted (see them with ``tests/run.sh -s -k multinode``)
and ends with every job finished once in the record, every result right, none
lost, and re-runs only where a worker was killed or stopped.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

import hither_fs as hi
from conftest import REPO, TESTS, missing_infrastructure
from hither_fs import fsck, protocol
from hither_fs.queue import iter_tickets, queue_names
from hither_fs.slurm import live_workers, scancel
from jobfuncs import add, sleepy


def nodes():
    proc = subprocess.run(['sinfo', '--noheader', '--Node', '--format=%N'], capture_output=True, text=True)
    return sorted(set(proc.stdout.split())) if proc.returncode == 0 else []


@pytest.fixture
def shared_root(monkeypatch):
    shared = os.environ.get('HITHER_FS_SHARED_DIR')
    if shutil.which('sinfo') is None or not shared or not os.path.isdir(shared) or len(nodes()) < 2:
        missing_infrastructure('no multi-node Slurm cluster with a shared directory: run the tests with '
                               'tests/run.sh (it starts slurm/cluster.sh with HITHER_FS_SLURM_NODES=3)')
    base = os.path.join(shared, 'test-' + uuid.uuid4().hex[:8])
    os.makedirs(base)
    path = os.path.join(base, 'root')
    monkeypatch.setenv('HITHER_FS_ROOT', path)
    handlers = []
    with hi.Config(root=path):
        yield hi.Root.get(path), base, handlers
    for h in handlers:
        try:
            h.cancel_allocations(hi.Root.get(path))
        except Exception:
            pass
    # (the root stays for a person to look at; slurm/cluster.sh stop removes the shared directory)


def handler(handlers, **kwargs):
    kwargs.setdefault('squeue_interval', 2)
    kwargs.setdefault('idle_timeout', 30)
    kwargs.setdefault('memory_gb_per_slot', 0.5)
    kwargs.setdefault('lease', 8)
    h = hi.SlurmJobHandler(**kwargs)
    handlers.append(h)
    return h


def wait_all(root, jobs, h, timeout, on_tick=None):
    """Wait for every job, letting the handler scale its allocations meanwhile."""
    deadline = time.monotonic() + timeout
    left = list(jobs)
    while left:
        assert time.monotonic() < deadline, '{} of {} jobs unfinished, e.g. {}: {}'.format(
            len(left), len(jobs), left[0].id, diagnose(root, left[0].id))
        h.scale(root)
        if on_tick:
            on_tick()
        time.sleep(0.2)
        left = [j for j in left if not j.is_done()]


def diagnose(root, job_id):
    """What a person would look at for a job that does not finish."""
    return {'state': protocol.read_state(root, job_id), 'files': sorted(os.listdir(root.layout.job_dir(job_id))),
            'token': protocol.find_tokens(root, {job_id}).get(job_id),
            'fsck': [f for f in fsck.fsck(root) if job_id in f.path or job_id in f.problem]}


def assert_clean(root):
    """No token left anywhere, and nothing fsck would call damage."""
    assert os.listdir(root.layout.running) == [] and os.listdir(root.layout.pending) == []
    assert [t for q in queue_names(root.layout) for t in iter_tickets(root.layout, q)] == []
    damage = [f for f in fsck.fsck(root) if f.damage]
    assert damage == []


def reruns_only_of(jobs, lost_workers):
    """Every earlier run of a job was on a worker the test killed or stopped."""
    extra = 0
    for j in jobs:
        for run in j.get_state().get('history', []):
            assert run['worker'] in lost_workers, (j.id, run)
            extra += 1
    return extra


def test_chaos_across_nodes(shared_root):
    """1000 jobs through one allocation per node while workers on several nodes are SIGKILLed."""
    root, base, handlers = shared_root
    h = handler(handlers, max_allocations=3, slots=4, time_limit='00:15:00')
    rng = random.Random(1234)
    with hi.Config(job_handler=h):
        jobs = [sleepy.run(seconds=rng.uniform(0.05, 0.15), result=i * i) for i in range(1000)]
    killed = {}  # worker id -> node
    schedule = {'next': time.monotonic() + 1}

    def maybe_kill():
        if len(killed) >= 5 or time.monotonic() < schedule['next']:
            return
        busy = [hb for hb in live_workers(root, max_age=5) if hb.get('jobs') and hb['id'] not in killed]
        if not busy:
            return
        # another node than the last victim's, when there is one
        last = list(killed.values())[-1:] or [None]
        others = [hb for hb in busy if hb['host'] != last[0]] or busy
        victim = rng.choice(others)
        os.kill(victim['pid'], signal.SIGKILL)  # no warning, no cleanup
        killed[victim['id']] = victim['host']
        schedule['next'] = time.monotonic() + rng.uniform(1.5, 3)
    wait_all(root, jobs, h, timeout=600, on_tick=maybe_kill)
    assert [j.get_result() for j in jobs] == [i * i for i in range(1000)]
    assert all(j.status == 'finished' for j in jobs)
    extra = reruns_only_of(jobs, set(killed))
    ran_on = {j.get_runtime_info()['host'] for j in jobs}
    print('\nchaos across nodes: {} jobs on {} nodes ({}), {} workers SIGKILLed on {} nodes ({}), '
          '{} jobs re-run ({} extra runs), {} allocations'.format(
              len(jobs), len(ran_on), ', '.join(sorted(ran_on)), len(killed), len(set(killed.values())),
              ', '.join(sorted(set(killed.values()))), sum(1 for j in jobs if j.get_state().get('history')),
              extra, len(h.history)))
    assert len(killed) >= 3 and len(set(killed.values())) >= 2
    assert len(ran_on) >= 2
    assert_clean(root)


def test_a_stopped_allocation_loses_its_job_and_discards_its_outcome(shared_root, tmp_path):
    """``scancel --signal=STOP`` (every process of one allocation stopped, as a suspended job is)
    for longer than the lease: the other node goes on and runs the job; resumed, the stopped
    worker finds its claim gone and records nothing."""
    root, base, handlers = shared_root
    h = handler(handlers, max_allocations=2, slots=1, lease=5, time_limit='00:10:00')
    pid_file = os.path.join(base, 'pid')
    with hi.Config(job_handler=h):
        job = sleepy.run(seconds=10, pid_file=pid_file, result='once')  # still running when it is stopped
    deadline = time.monotonic() + 180
    while not os.path.exists(pid_file):
        assert time.monotonic() < deadline, 'the job never started'
        h.scale(root)
        time.sleep(0.2)
    holder = _until(lambda: [hb for hb in live_workers(root, max_age=10) if job.id in (hb.get('jobs') or [])])[0]
    stopped = str(holder['slurm_job_id'])
    subprocess.run(['scancel', '--signal=STOP', '--full', stopped], check=True)
    try:
        with hi.Config(job_handler=h):
            others = [add.run(x=i, y=1) for i in range(10)]
        wait_all(root, others + [job], h, timeout=300)
        assert [j.get_result() for j in others] == list(range(1, 11))
        assert job.get_result() == 'once'
        state = job.get_state()
        assert state['attempt'] == 2 and state['history'][0]['worker'] == holder['id']
        assert 'heartbeat stopped' in state['history'][0]['why']
        assert state['runtime']['host'] != holder['host'] or state['runtime']['slurm_job_id'] != stopped
    finally:
        subprocess.run(['scancel', '--signal=CONT', '--full', stopped])
    log = os.path.join(root.path, 'logs', 'slurm', stopped + '.log')
    said = _until(lambda: [line for line in open(log) if 'discarded' in line or 'taken back' in line], 120)
    assert job.get_state() == state  # the record is the second run's, untouched
    assert reruns_only_of(others + [job], {holder['id']}) == 1
    print('\nstopped allocation: job {} re-run by allocation {} on {} after allocation {} on {} was stopped for '
          'longer than its lease; resumed, its worker said: {}'.format(
              job.id, state['runtime']['slurm_job_id'], state['runtime']['host'], stopped, holder['host'],
              said[0].strip().split(' WARNING ')[-1]))
    scancel([stopped])
    assert_clean(root)


def _until(find, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found:
            return found
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.1)


def test_scancel_of_one_nodes_allocation(shared_root):
    """``scancel`` of the allocation on one node: its running jobs are handed back at once and
    finish on the other nodes (or a new allocation); every other job is untouched."""
    root, base, handlers = shared_root
    h = handler(handlers, max_allocations=3, slots=2, time_limit='00:10:00')
    with hi.Config(job_handler=h):
        jobs = [sleepy.run(seconds=2, result=i) for i in range(12)]
    running = _until(lambda: [hb for hb in live_workers(root, max_age=10) if hb.get('jobs')], 180)
    victim = running[0]
    on_victim = set(victim['jobs'])
    scancel([str(victim['slurm_job_id'])])
    wait_all(root, jobs, h, timeout=300)
    assert [j.get_result() for j in jobs] == list(range(12))
    rerun = {j.id for j in jobs if j.get_state().get('history')}
    assert rerun and rerun <= on_victim
    for j in jobs:
        for run in j.get_state().get('history', []):
            assert 'allocation was cancelled' in run['why'] or 'dead' in run['why'] or 'stopped' in run['why']
    print('\nscancel of {} on {}: {} of its jobs re-run elsewhere, {} jobs untouched'.format(
        victim['slurm_job_id'], victim['host'], len(rerun), len(jobs) - len(rerun)))
    assert reruns_only_of(jobs, {victim['id']}) == len(rerun)
    assert_clean(root)


SUBMITTER = r'''
import os, sys, time
import hither_fs as hi
from jobfuncs import add, tally

class Multi(hi.JobHandler):
    def queue_for(self, root):
        return 'multi'

cache_dir, root, tally_dir, go, out = sys.argv[1:6]
while not os.path.exists(go):  # all submitters start together
    time.sleep(0.005)
with hi.Config(job_handler=Multi(), job_cache=hi.JobCache(cache_dir), root=root):
    ups = [tally.run(x=i, tally_dir=tally_dir) for i in range(40)]
    downs = [add.run(x=u, y=1000) for u in ups]
with open(out, 'w') as f:
    f.write(' '.join(j.id for j in ups + downs))
'''


def test_pipeline_and_cache_spread_over_nodes(shared_root):
    """Three submitters, one on each node, submit the same 40 jobs and a pipeline after them at the
    same moment, with one JobCache in the shared directory: each job runs once, wherever it runs."""
    root, base, handlers = shared_root
    tally_dir, go = os.path.join(base, 'tally'), os.path.join(base, 'go')
    os.makedirs(tally_dir)
    cache_dir = os.path.join(base, 'cache')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    submitters = []
    for k, node in enumerate(nodes()[:3]):
        out = os.path.join(base, 'ids-{}'.format(k))
        submitters.append((node, out, subprocess.Popen(
            ['srun', '--nodelist=' + node, '-N1', '-n1', '--mem=500M', '--cpus-per-task=1', sys.executable, '-c',
             SUBMITTER, cache_dir, root.path, tally_dir, go, out], env=env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    time.sleep(3)  # srun starts each submitter; they wait for the go file
    open(go, 'w').close()
    ids = []
    for node, out, proc in submitters:
        said, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, (node, said)
        with open(out) as f:
            ids.append(f.read().split())
    assert ids[0] == ids[1] == ids[2]  # one job per key: every submitter got the same jobs
    jobs = [hi.get_job(i) for i in ids[0]]
    h = handler(handlers, max_allocations=3, slots=4, queue_name='multi', time_limit='00:10:00')
    wait_all(root, jobs, h, timeout=300)
    assert [j.get_result() for j in jobs] == [2 * i for i in range(40)] + [2 * i + 1000 for i in range(40)]
    runs = sorted(os.listdir(tally_dir))
    per_key = {i: len([r for r in runs if r.startswith('{}-'.format(i))]) for i in range(40)}
    assert per_key == {i: 1 for i in range(40)}, per_key
    hosts = {j.get_runtime_info()['host'] for j in jobs}
    print('\npipeline and cache over nodes: 3 submitters on {} submitted 80 jobs each; {} jobs exist, each '
          'of the 40 keys ran once, on {}'.format(', '.join(n for n, _, _ in submitters), len(set(ids[0])),
                                                  ', '.join(sorted(hosts))))
    assert reruns_only_of(jobs, set()) == 0
    assert_clean(root)
    assert protocol.read_state(root, jobs[-1].id)['status'] == 'finished'

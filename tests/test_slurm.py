"""Jobs in sbatch worker allocations on the real local Slurm cluster (slurm/cluster.sh).

These tests need the cluster: tests/run.sh starts it. Without it they fail.
"""

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

import hither_fs as hi
from conftest import missing_infrastructure
from hither_fs.slurm import live_workers, scancel
from jobfuncs import add, sleepy
from test_jobs import wait_for_file


@pytest.fixture(scope='module')
def cluster():
    if shutil.which('sinfo') is None:
        missing_infrastructure('Slurm is not installed: run the tests with tests/run.sh (it installs and starts it)')
    proc = subprocess.run(['sinfo', '--noheader', '--format=%T'], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        missing_infrastructure('no Slurm cluster answers (start one with slurm/cluster.sh start, or use tests/run.sh): '
                    + proc.stderr.strip())


@pytest.fixture
def slurm_handler(cluster, root):
    handlers = []

    def make(**kwargs):
        kwargs.setdefault('idle_timeout', 15)
        kwargs.setdefault('squeue_interval', 2)
        h = hi.SlurmJobHandler(**kwargs)
        handlers.append(h)
        return h
    yield make
    for h in handlers:
        h.cancel_allocations(root)


def slurm_nodes():
    out = subprocess.run(['sinfo', '--noheader', '--Node', '--format=%N'], capture_output=True, text=True).stdout
    return sorted(set(out.split()))


def slurm_ids(jobs):
    return {j.get_runtime_info().get('slurm_job_id') for j in jobs}


def test_jobs_run_inside_sbatch_allocations(root, slurm_handler):
    handler = slurm_handler(max_allocations=1, slots=2)
    with hi.Config(job_handler=handler):
        jobs = [add.run(x=i, y=i) for i in range(6)]
        assert [j.wait(timeout=120) for j in jobs] == [0, 2, 4, 6, 8, 10]
    info = jobs[0].get_runtime_info()
    assert info['slurm_job_id'] in handler.history
    assert info['slurm_node'] in slurm_nodes()
    assert info['host'] == info['slurm_node'] or slurm_nodes() == ['localhost']  # each node has its own name
    assert slurm_ids(jobs) == {info['slurm_job_id']}
    # the allocation's log is in the root
    assert os.path.exists(os.path.join(root.path, 'logs', 'slurm', info['slurm_job_id'] + '.log'))


def test_100_jobs_flow_through_2_allocations(root, slurm_handler):
    handler = slurm_handler(max_allocations=2, slots=4)
    with hi.Config(job_handler=handler):
        jobs = [sleepy.run(seconds=0.2, result=i) for i in range(100)]
        assert [j.wait(timeout=300) for j in jobs] == list(range(100))
    assert len(handler.history) == 2  # sbatch calls scale with allocations, not with jobs
    assert slurm_ids(jobs) == set(handler.history)


def test_scancel_in_the_middle_of_a_job_reruns_it_elsewhere(root, slurm_handler, tmp_path):
    handler = slurm_handler(max_allocations=1, slots=1)
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=handler):
        job = sleepy.run(seconds=6, pid_file=pid_file, result='survived')
        wait_for_file(pid_file, timeout=120)
        first = handler.history[0]
        scancel([first])
        assert job.wait(timeout=240) == 'survived'
    info = job.get_runtime_info()
    assert info['slurm_job_id'] != first
    assert job.get_state()['attempt'] == 2  # the cancelled run counts as an attempt


def test_time_limit_ending_during_a_job_hands_it_back(root, slurm_handler):
    # 1-minute allocations whose worker hands unfinished jobs back 30 s before the limit:
    # `late` starts ~8 s in, cannot finish by 30 s, goes back, and finishes in the next allocation
    handler = slurm_handler(max_allocations=1, slots=1, time_limit='1', warning_lead=5, drain_margin=30)
    with hi.Config(job_handler=handler):
        early = sleepy.run(seconds=8, result='early')
        late = sleepy.run(seconds=25, result='done late')
        assert late.wait(timeout=400) == 'done late'
    assert early.get_runtime_info()['slurm_job_id'] == handler.history[0]
    assert late.get_runtime_info()['slurm_job_id'] == handler.history[1]
    assert len(handler.history) == 2  # the replacement was submitted when the first one left
    state = late.get_state()
    assert state['attempt'] == 1 and state['handed_back'] == 1  # handed back in time: not counted
    assert 'time limit' in state['history'][-1]['why'] and not state['history'][-1]['counted']


def test_compute_resource_serves_only_its_own_jobs(root, slurm_handler):
    """The seeds' remote example, with the root in place of MongoDB and Slurm behind the resource."""
    from jobfuncs import sumsqr
    resource = hi.ComputeResource(compute_resource_id='resource1', job_handler=slurm_handler(max_allocations=1),
                                  job_cache=hi.JobCache())
    resource.clear()
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='resource1')):
        val1 = sumsqr.run(x=np.array([1]))
        val2 = sumsqr.run(x=np.array([1, 2]))
        val3 = sumsqr.run(x=np.array([1, 2, 3]))
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='resource2')):
        elsewhere = sumsqr.run(x=np.array([5]))
    serving = threading.Thread(target=resource.run)
    serving.start()
    try:
        assert (val1.wait(timeout=120), val2.wait(timeout=120), val3.wait(timeout=120)) == (1, 5, 14)
        assert val1.get_runtime_info()['slurm_job_id']
        assert val1.get_state()['served_by'] == 'resource1'
        time.sleep(0.5)  # resource1 keeps polling; resource2's job must stay untouched
        assert elsewhere.status == 'queued'
        assert elsewhere.get_state()['queue'] == 'resource-resource2'
    finally:
        resource.stop()
        serving.join()
    # resource1's cache now answers the same job without running it
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='resource1')):
        again = sumsqr.run(x=np.array([1, 2, 3]))
    resource.serve_once()
    assert again.status == 'finished' and again.get_state().get('cached')
    assert again.wait() == 14


def test_cli_workers_ls_shows_allocations(root, slurm_handler):
    from conftest import run_python
    handler = slurm_handler(max_allocations=1, slots=3)
    with hi.Config(job_handler=handler):
        job = sleepy.run(seconds=4)
        wait_for_status = time.monotonic() + 120
        while job.status != 'running':
            assert time.monotonic() < wait_for_status
            time.sleep(0.05)
    deadline = time.monotonic() + 10  # the heartbeat follows a job start within half a second
    while True:
        out = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', 'workers', 'ls').stdout
        line = [ln for ln in out.splitlines() if handler.history[0] in ln]
        if line and job.id in line[0]:
            break
        assert time.monotonic() < deadline, out
    hb = [hb for hb in live_workers(root) if hb.get('slurm_job_id') == handler.history[0]][0]
    assert hb['host'][:10] in line[0] and hb['slurm_node'] in slurm_nodes()
    assert ' 3 ' in line[0] and 'running' in line[0]
    assert [hb for hb in live_workers(root) if hb.get('slurm_job_id') == handler.history[0]]


def test_parallel_example_on_slurm(root, cluster):
    from conftest import run_python
    proc = run_python('examples/parallel_slurm.py', timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'Results: [0, 1, 4, 9, 16, 25, 36, 49]' in proc.stdout
    jobs = [hi.get_job(j) for shard in os.listdir(os.path.join(root.path, 'jobs'))
            for j in os.listdir(os.path.join(root.path, 'jobs', shard))]
    assert len(jobs) == 8 and all(j.get_runtime_info().get('slurm_job_id') for j in jobs)
    from hither_fs.slurm import scancel
    scancel({j.get_runtime_info()['slurm_job_id'] for j in jobs})

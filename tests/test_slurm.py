"""Jobs in sbatch worker allocations on the real local Slurm cluster (slurm/cluster.sh).

These tests need the cluster: tests/run.sh starts it. Without it they fail.
"""

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

import hither_fs as hi
import hither_fs.submit
from conftest import need_slurm
from hither_fs.queue import iter_tickets
from hither_fs.slurm import live_workers, scancel
from jobfuncs import add, sleepy
from test_jobs import wait_for_file


@pytest.fixture(scope='module')
def cluster():
    need_slurm()


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
        jobs = [sleepy.run(seconds=0.4, result=i) for i in range(100)]  # long enough for both to take some
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
    # `late` starts ~12 s in, cannot finish by 30 s, goes back, and finishes in the next allocation
    # (with 5 s or more to spare there: the worker's deadline counts from its start, after the launch)
    handler = slurm_handler(max_allocations=1, slots=1, time_limit='1', warning_lead=5, drain_margin=30)
    with hi.Config(job_handler=handler):
        early = sleepy.run(seconds=12, result='early')
        late = sleepy.run(seconds=20, result='done late')
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


def hither_fs_cli(*args):
    from conftest import run_python
    return run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', *args)


def workers_ls_lines(out, slurm_job_id):
    """The lines of `hither-fs workers ls` whose SLURM JOB column is this id, matched whole
    (an id such as 34 is also a substring of a queue's hex name, slurm-bf61e2fa1634)."""
    return [ln for ln in out.splitlines()[1:] if ln.split()[2:3] == [slurm_job_id]]


def test_cli_workers_ls_shows_allocations(root, slurm_handler):
    handler = slurm_handler(max_allocations=1, slots=3)
    with hi.Config(job_handler=handler):
        job = sleepy.run(seconds=30)  # still running while the loop below samples, however slow the CLI
        wait_for_status = time.monotonic() + 120
        while job.status != 'running':
            assert time.monotonic() < wait_for_status
            time.sleep(0.05)
    deadline = time.monotonic() + 10  # the heartbeat follows a job start within half a second
    while True:
        out = hither_fs_cli('workers', 'ls').stdout
        line = workers_ls_lines(out, handler.history[0])
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


def test_handlers_of_different_shapes_never_share_allocations(root, slurm_handler):
    small = slurm_handler(max_allocations=1, slots=2, memory_gb_per_slot=0.25)
    big = slurm_handler(max_allocations=1, slots=2, memory_gb_per_slot=0.5)
    assert small.queue_for(root) != big.queue_for(root)
    with hi.Config(job_handler=small):
        small_jobs = [add.run(x=i, y=0) for i in range(4)]
    with hi.Config(job_handler=big):
        big_jobs = [add.run(x=i, y=100) for i in range(4)]
    hi.wait(timeout=180)
    assert [j.get_result() for j in small_jobs] == [0, 1, 2, 3]
    assert [j.get_result() for j in big_jobs] == [100, 101, 102, 103]
    assert slurm_ids(small_jobs) <= set(small.history) and slurm_ids(big_jobs) <= set(big.history)
    assert not set(small.history) & set(big.history)
    assert big_jobs[0].spec['shape']['memory_gb_per_slot'] == 0.5
    # the allocation's worker (idle now, for idle_timeout) says its shape: hither-fs workers ls
    out = hither_fs_cli('workers', 'ls').stdout
    line = workers_ls_lines(out, big.history[0])
    assert line and '(default) 1cpu 0.5G 01:00:00' in line[0], out


@pytest.mark.parametrize('options, words', [
    ({'partition': 'gpu-nonexistent'}, 'invalid partition'),
    ({'cpus_per_slot': 64, 'slots': 1}, 'more processors requested than permitted'),
    ({'gres': 'gpu:1'}, 'gres'),
])
def test_an_allocation_sbatch_refuses_fails_its_jobs_at_once(root, slurm_handler, options, words):
    handler = slurm_handler(max_allocations=1, **options)
    with hi.Config(job_handler=handler):
        with pytest.raises(hi.SlurmError, match='(?i)' + words):
            add.run(x=1, y=2)
        job = hither_fs.submit._jobs[-1]
        assert job.status == 'error'
        with pytest.raises(hi.JobError, match='(?i)^SlurmError: .*' + words + '.*sbatch refused the allocation'):
            job.get_result()
        # nothing is left queued for it, and the handler takes no more jobs (nothing is written)
        assert list(iter_tickets(root.layout, job.spec['queue'])) == []
        before = len(os.listdir(os.path.join(root.path, 'jobs')))
        with pytest.raises(hi.SlurmError, match='takes no more jobs'):
            add.run(x=3, y=4)
        assert len(os.listdir(os.path.join(root.path, 'jobs'))) == before
    hi.wait(timeout=5)  # returns: nothing waits for what cannot run
    assert handler.history == []
    assert words in hither_fs_cli('ls').stdout.lower()  # the first words of sbatch's own, beside the job


def test_a_controller_that_does_not_answer_is_retried_then_the_jobs_fail(root, slurm_handler, tmp_path, monkeypatch,
                                                                       caplog):
    # a real sbatch, talking to a controller port where nothing listens
    conf = open(os.environ['SLURM_CONF']).read()
    import re
    conf = re.sub(r'(?m)^SlurmctldPort=.*$', '', conf) + '\nSlurmctldPort=1\n'
    dead = tmp_path / 'slurm.conf'
    dead.write_text(conf)
    monkeypatch.setenv('SLURM_CONF', str(dead))
    handler = slurm_handler(max_allocations=1, submit_retry_for=8)
    started = time.monotonic()
    with caplog.at_level('WARNING', logger='hither_fs'):
        with hi.Config(job_handler=handler):
            job = add.run(x=1, y=2)  # the first failure passes: .run() returns
        with pytest.raises(hi.JobError, match='sbatch kept failing for'):
            job.wait(timeout=180)
    assert time.monotonic() - started >= 8
    said = [r.getMessage() for r in caplog.records if 'retrying with back-off' in r.getMessage()]
    assert len(said) == 1, caplog.text  # said once, not every few seconds
    assert 'contact' in said[0].lower() or 'timed out' in said[0].lower() or 'refused' in said[0].lower()
    monkeypatch.undo()


def test_ls_and_show_say_why_a_job_waits(root, slurm_handler):
    handler = slurm_handler(max_allocations=1, sbatch_args=['--hold'])
    with hi.Config(job_handler=handler):
        job = add.run(x=1, y=2)
        deadline = time.monotonic() + 60
        while True:
            handler.help(root)
            out = hither_fs_cli('ls').stdout
            if 'pending: JobHeldUser' in out:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
    line = [ln for ln in out.splitlines() if job.id in ln][0]
    assert 'allocation {} pending: JobHeldUser'.format(handler.history[0]) in line
    shown = json.loads(hither_fs_cli('show', job.id).stdout)
    assert shown['waiting'] == 'allocation {} pending: JobHeldUser'.format(handler.history[0])
    assert shown['spec']['shape']['sbatch_args'] == ['--hold']
    job.cancel()


def test_a_notebooks_function_runs_in_a_slurm_allocation(cluster, tmp_path, monkeypatch):
    from test_notebook import run_notebook
    run_notebook(tmp_path, monkeypatch, 'HANDLER = hi.SlurmJobHandler(max_allocations=1, idle_timeout=5, '
                                        'squeue_interval=2, memory_gb_per_slot=0.25)')


SLURM_SCRIPT = '''
import json, os
import hither_fs as hi
from jobfuncs import environment_seen
handler = hi.SlurmJobHandler(max_allocations=1, slots=2, idle_timeout=30, squeue_interval=2, memory_gb_per_slot=0.25)
with hi.Config(job_handler=handler):
    jobs = [environment_seen.run(names=['MYVAR'], marker='-') for _ in range(2)]
    print(json.dumps([[j.wait(timeout=180)['vars']['MYVAR'], j.get_runtime_info()['slurm_job_id']] for j in jobs]))
'''


def test_scripts_in_different_environments_never_share_allocations(root, cluster, tmp_path):
    # the first script's allocation idles on (idle_timeout 30 s) while the second one runs
    from conftest import run_python
    script = tmp_path / 'script.py'
    script.write_text(SLURM_SCRIPT)
    seen = {}
    try:
        for n in (1, 2):
            proc = run_python(str(script), env={'MYVAR': 'run{}'.format(n)}, timeout=300)
            assert proc.returncode == 0, proc.stderr
            seen[n] = json.loads(proc.stdout.splitlines()[-1])
        assert [v for v, _ in seen[1]] == ['run1', 'run1'] and [v for v, _ in seen[2]] == ['run2', 'run2']
        assert not {s for _, s in seen[1]} & {s for _, s in seen[2]}  # never in each other's allocation
    finally:
        scancel({s for rows in seen.values() for _, s in rows})


def test_an_allocation_slurm_will_never_start_is_cancelled_and_its_jobs_fail(root, slurm_handler):
    # an allocation that depends on a Slurm job which then fails: Slurm keeps it pending for ever
    blocker = subprocess.run(['sbatch', '--parsable', '--mem=100M', '--wrap=sleep 600'], capture_output=True,
                             text=True, check=True).stdout.strip().split(';')[0]
    handler = slurm_handler(max_allocations=1, sbatch_args=['--dependency=afterok:' + blocker])
    try:
        with hi.Config(job_handler=handler):
            job = add.run(x=1, y=2)
            deadline = time.monotonic() + 60
            while 'pending: Dependency' not in hither_fs_cli('ls').stdout:  # waiting, and saying why
                handler.help(root)
                assert time.monotonic() < deadline
                time.sleep(0.5)
            scancel([blocker])
            with pytest.raises(hi.JobError, match='Slurm will never start allocation {} as asked \\(pending: '
                                                  'DependencyNeverSatisfied\\)'.format(handler.history[0])):
                job.wait(timeout=120)
    finally:
        scancel([blocker])
    assert handler.history[0] not in subprocess.run(['squeue', '--noheader', '--format=%i'], capture_output=True,
                                                    text=True).stdout.split()


def test_allocations_whose_worker_cannot_start_fail_the_jobs_instead_of_coming_back_for_ever(
        root, slurm_handler, tmp_path, monkeypatch):
    """Slurm runs the allocations, but their worker exits at once (here it refuses its scratch
    directory, a symbolic link; as well a broken Python on the nodes): after three in a row
    the queue's jobs fail with the worker's own words, and no more allocations are submitted."""
    scratch = tmp_path / 'node-tmp'
    scratch.mkdir()
    os.symlink('/tmp', str(scratch / 'hither_fs-{}'.format(os.getuid())))
    monkeypatch.setenv('TMPDIR', str(scratch))  # what the allocations get (sbatch --export=ALL)
    handler = slurm_handler(max_allocations=1, slots=1)
    with hi.Config(job_handler=handler):
        job = add.run(x=1, y=2)
        with pytest.raises(hi.JobError, match='ended before their worker started') as failed:
            job.wait(timeout=240)
    assert 'refusing the scratch directory' in str(failed.value)
    assert len(handler.history) == 3
    with pytest.raises(hi.SlurmError, match='ended before their worker started'):
        with hi.Config(job_handler=handler):
            add.run(x=2, y=2)


def test_a_root_workers_would_refuse_is_refused_at_run(root, slurm_handler):
    handler = slurm_handler(max_allocations=1, slots=1)
    os.chmod(root.layout.jobs, 0o777)  # writable by others: every worker would refuse it
    try:
        with pytest.raises(PermissionError, match='workers refuse to run jobs from'):
            with hi.Config(job_handler=handler):
                add.run(x=1, y=2)
    finally:
        os.chmod(root.layout.jobs, 0o700)
    assert handler.history == []

"""Crash consistency: a submitter or a worker killed between any two of its steps, or a
full disk at any one of its writes, leaves every job absent, or complete and waitable,
or reported by fsck and repaired by ``fsck --repair`` - never a job recorded as failed
beside a valid result, never a result lost.

Each case runs a real process that SIGKILLs itself (or sees ENOSPC) at its n-th step
that changes the root (see crashpoint.py), for n = 1, 2, ... until the process gets
through untouched. Then the root is checked, repaired, and served by a normal worker.
"""

import os
import signal
import subprocess
import sys

import pytest

import hither_fs as hi
from conftest import REPO, TESTS
from hither_fs import fsck, protocol
from hither_fs.protocol import FINAL_VALUES
from hither_fs.queue import iter_tickets
from hither_fs.runtime.layout import host_label

SUBMIT = r'''
import sys, crashpoint
import hither_fs as hi
from jobfuncs import add
root, at, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Q(hi.JobHandler):
    def queue_for(self, r):
        return 'q'

hi.Root(root)
crashpoint.arm(root, at, mode)
with hi.Config(job_handler=Q(), root=root, job_cache=hi.JobCache()):
    up = add.run(x=1, y=2)
    down = add.run(x=up, y=10)
'''

WORKER = r'''
import sys, crashpoint
import hither_fs as hi
from hither_fs.worker import Worker
root, at, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = hi.Root(root)
crashpoint.arm(root, at, mode)
code = Worker(r, ['q'], lease=2, idle_timeout=0.5, max_jobs=2).run()
print('fired' if crashpoint.fired() else 'not fired')
sys.exit(code)
'''


class Q(hi.JobHandler):
    def queue_for(self, root):
        return 'q'


def run(code, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def jobs_in(root):
    return [hi.get_job(j, root.path) for shard in os.listdir(root.layout.jobs)
            for j in os.listdir(os.path.join(root.layout.jobs, shard)) if not j.startswith('.')]


def repair_and_finish(root, monkeypatch):
    """fsck --repair as an administrator would run it once the dust settled (the dead
    process's leftovers count as old), then a normal worker serves what is left."""
    monkeypatch.setattr(fsck, 'STALE_SECONDS', 0.0)
    monkeypatch.setattr(fsck, 'STALE_TEMP_SECONDS', 0.0)
    findings = fsck.fsck(root, repair=True)
    assert [f for f in findings if f.damage] == [], findings
    assert [f for f in findings if not f.repaired] == [], findings
    proc = run(WORKER, root.path, 0, 'kill')  # at=0: never fires
    assert proc.returncode == 0, proc.stderr
    return findings


def check_outcomes(root):
    """Every job that exists is final and right; a downstream job only with its upstream."""
    jobs = jobs_in(root)
    for job in jobs:
        state = job.get_state()
        assert state['status'] in FINAL_VALUES, (job.id, state)
        assert not ('result' in state and 'error' in state)
        assert job.wait(timeout=5) in (3, 13), job.id
    assert os.listdir(root.layout.running) == [] and os.listdir(root.layout.pending) == []
    return jobs


@pytest.mark.parametrize('mode', ['kill', 'enospc'])
def test_a_submitter_stopped_at_any_step(tmp_path, monkeypatch, mode):
    outcomes = []
    for at in range(1, 100):
        root_path = str(tmp_path / '{}-{}'.format(mode, at))
        proc = run(SUBMIT, root_path, at, mode)
        root = hi.Root.get(root_path)
        if proc.returncode == 0:
            break  # got through: every step was tried
        assert proc.returncode == (-signal.SIGKILL if mode == 'kill' else 1), proc.stderr
        if mode == 'enospc':
            assert 'No space left on device' in proc.stderr and 'Traceback' in proc.stderr  # said, not hidden
        findings = repair_and_finish(root, monkeypatch)
        jobs = check_outcomes(root)
        outcomes.append((at, len(jobs), len(findings)))
    else:
        pytest.fail('the submitter never got through')
    print('\nsubmitter, {}: stopped at each of {} steps; jobs left (absent or finished) and fsck repairs: {}'.format(
        mode, len(outcomes), outcomes))
    assert len(outcomes) >= 8


@pytest.mark.parametrize('mode', ['kill', 'enospc'])
def test_a_worker_stopped_at_any_step(tmp_path, monkeypatch, mode):
    outcomes = []
    for at in range(1, 200):
        root_path = str(tmp_path / '{}-{}'.format(mode, at))
        root = hi.Root.get(root_path)
        with hi.Config(job_handler=Q(), root=root_path):
            up = add_job(x=1, y=2)
            down = add_job(x=up, y=10)
        proc = run(WORKER, root_path, at, mode)
        if mode == 'kill' and proc.returncode == 0:
            break
        if mode == 'enospc':
            assert proc.returncode == 0, proc.stderr  # a full disk never ends a worker
            if proc.stdout.strip() == 'not fired':
                break  # the failure point is past the last step
        else:
            assert proc.returncode == -signal.SIGKILL, proc.stderr
        findings = repair_and_finish(root, monkeypatch)
        check_outcomes(root)
        assert up.wait(timeout=5) == 3 and down.wait(timeout=5) == 13  # nothing lost
        outcomes.append((at, up.get_state()['attempt'], len(findings)))
    else:
        pytest.fail('the worker never got through')
    print('\nworker, {}: stopped at each of {} steps; (step, attempts of the first job, fsck repairs): {}'.format(
        mode, len(outcomes), outcomes))
    assert len(outcomes) >= 10


def add_job(**kwargs):
    from jobfuncs import add
    return add.run(**kwargs)


def test_a_worker_killed_while_committing_is_recovered_without_fsck(root):
    """The narrowest window: a worker killed after taking its claim to commit and before
    publishing the state. The next worker's lease recovery moves the job on by itself."""
    with hi.Config(job_handler=Q()):
        job = add_job(x=1, y=2)
    [(ticket, _)] = list(iter_tickets(root.layout, 'q'))
    gone = 'w-{}-999999999-abcdef'.format(host_label())  # a worker of this host whose pid is gone
    claim = protocol.claim(root, ticket, gone, protocol.read_spec(root, job.id))
    os.rename(claim.path, protocol.taken_path(root, gone, claim.token.name))  # taken, and then it died
    assert run(WORKER, root.path, 0, 'kill').returncode == 0
    assert job.wait(timeout=5) == 3 and job.get_state()['attempt'] == 2
    assert 'recording' in job.get_state()['history'][0]['why']

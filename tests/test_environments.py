"""Jobs run in the environment they were submitted from (hither_fs.environment)."""

import json
import os
import sys

import pytest

import hither_fs as hi
from hither_fs import environment
from conftest import REPO, TESTS, run_python

SCRIPT = '''
import json, os, sys
import pytest

import hither_fs as hi
from jobfuncs import environment_seen
sys.path.append(os.environ['MARKER'])  # changed at run time: the job must see it too
with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=2)):
    jobs = [environment_seen.run(names=['MYVAR', 'PYTHONPATH', 'HITHER_FS_SYS_PATH'], marker=os.environ['MARKER'],
                                 ) for i in range(3)]
print(json.dumps([j.wait(timeout=60) for j in jobs]))
'''


def test_scripts_in_different_environments_never_share_workers(root_path, tmp_path):
    # five scripts one after another, as a user runs them: each one's idle workers are still
    # there when the next starts (they leave about a second after their submitter)
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT)
    pythonpath = os.pathsep.join([REPO, TESTS])
    for n in range(1, 6):
        marker = str(tmp_path / 'marker{}'.format(n))
        proc = run_python(str(script), env={'MYVAR': 'run{}'.format(n), 'MARKER': marker})
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout.splitlines()[-1])
        for job in seen:
            assert job['vars'] == {'MYVAR': 'run{}'.format(n), 'PYTHONPATH': pythonpath, 'HITHER_FS_SYS_PATH': None}
            assert job['marker_on_path'] is True
            assert job['executable'] == sys.executable


def test_fingerprint_ignores_what_a_shell_changes_between_runs_only(monkeypatch):
    base = environment.fingerprint({'A': '1', 'PWD': '/x', 'SHLVL': '1'}, ['/p'])
    assert environment.fingerprint({'A': '1', 'PWD': '/y', 'SHLVL': '2', '_': '/bin/python'}, ['/p']) == base
    assert environment.fingerprint({'A': '2', 'PWD': '/x', 'SHLVL': '1'}, ['/p']) != base
    assert environment.fingerprint({'A': '1'}, ['/p', '/q']) != base


def test_queue_names_follow_the_environment(root, monkeypatch):
    handler = hi.ParallelJobHandler(num_workers=1)
    first = handler.queue_for(root)
    assert first.startswith('local-') and first == handler.queue_for(root)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert handler.queue_for(root) != first
    monkeypatch.delenv('OMP_NUM_THREADS')
    assert handler.queue_for(root) == first


def test_a_worker_adopts_the_submitters_path_and_pythonpath(monkeypatch):
    snapshot = environment.Snapshot({'PYTHONPATH': '/user/lib', 'X': '1'}, ['/script/dir', '/user/lib'])
    env = snapshot.for_worker('/pkg')
    assert env['PYTHONPATH'] == '/pkg' + os.pathsep + '/user/lib' and env['X'] == '1'
    monkeypatch.setattr(os, 'environ', dict(env))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    environment.adopt()
    assert sys.path == ['/script/dir', '/user/lib']
    assert os.environ == {'PYTHONPATH': '/user/lib', 'X': '1'}
    # without a PYTHONPATH of its own, the submitter's jobs get none either
    env = environment.Snapshot({}, ['/d']).for_worker('/pkg')
    monkeypatch.setattr(os, 'environ', dict(env))
    environment.adopt()
    assert os.environ == {}


def test_local_workers_that_cannot_start_fail_their_jobs_instead_of_hanging(root_path, tmp_path, monkeypatch):
    # an environment whose Python cannot import hither_fs's dependencies: every worker dies at once
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'psutil.py').write_text('raise ImportError("psutil is broken in this environment")\n')
    monkeypatch.setenv('PYTHONPATH', str(broken))
    from jobfuncs import add
    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=1)):
        job = add.run(x=1, y=2)
        with pytest.raises(hi.JobError, match='local workers keep failing \\(exit code 1\\); see .*\\.log'):
            job.wait(timeout=120)
    assert job.status == 'error'


def test_two_runs_of_one_script_in_one_environment_share_a_queue(root_path):
    show = 'import hither_fs as hi; print(hi.ParallelJobHandler(1).queue_for(hi.Root.get()))'
    first, again = (run_python(show, env={'MYVAR': 'same'}).stdout.strip() for _ in range(2))
    other = run_python(show, env={'MYVAR': 'other'}).stdout.strip()
    assert first == again and first.startswith('local-') and other != first


def test_the_snapshot_is_made_again_after_any_change(monkeypatch, tmp_path):
    """environment.current() answers from its last snapshot until the variables, sys.path
    or (for a '' entry) the working directory change."""
    first = environment.current()
    assert environment.current() is first
    monkeypatch.setenv('HITHER_FS_TEST_VARIABLE', 'x')
    changed = environment.current()
    assert changed is not first and changed.environ['HITHER_FS_TEST_VARIABLE'] == 'x'
    monkeypatch.syspath_prepend(str(tmp_path))
    moved = environment.current()
    assert moved is not changed and str(tmp_path) in moved.path
    monkeypatch.setattr(sys, 'path', [''] + sys.path)
    monkeypatch.chdir(tmp_path / '..')
    here = environment.current()
    monkeypatch.chdir(tmp_path)
    assert environment.current().path[0] == str(tmp_path) != here.path[0]

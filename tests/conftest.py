import os
import sys

import pytest

import hither_fs as hi
import hither_fs.submit

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)


def missing_infrastructure(reason):
    """A test's real infrastructure (Slurm, Apptainer, the multi-node cluster, Jupyter, the lab's users) is missing:
    fail under CI (where tests/run.sh must have set it up), skip with the reason elsewhere."""
    if os.environ.get('CI'):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def root_path(tmp_path, monkeypatch):
    """A fresh root for the test, active through hi.Config and $HITHER_FS_ROOT."""
    path = str(tmp_path / 'root')
    monkeypatch.setenv('HITHER_FS_ROOT', path)
    hither_fs.submit._jobs.clear()  # hi.wait() waits for this test's jobs, not for an earlier test's
    with hi.Config(root=path):
        yield path


@pytest.fixture
def root(root_path):
    return hi.Root.get(root_path)


@pytest.fixture
def parallel(root_path):
    """A ParallelJobHandler whose workers are stopped after the test."""
    handlers = []

    def make(num_workers=2):
        h = hi.ParallelJobHandler(num_workers=num_workers)
        handlers.append(h)
        return h
    yield make
    for h in handlers:
        h.halt()


def run_python(code_or_file, *args, env=None, timeout=120, cwd=None):
    import subprocess
    cmd = [sys.executable] + ([code_or_file] if code_or_file.endswith('.py') else ['-c', code_or_file])
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    full_env.update(env or {})
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd or REPO)

import os
import shutil
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


def need_slurm():
    """Fail (under CI) or skip unless a Slurm cluster answers."""
    import subprocess
    if shutil.which('sinfo') is None:
        missing_infrastructure('Slurm is not installed: run the tests with tests/run.sh (it installs and starts it)')
    proc = subprocess.run(['sinfo', '--noheader', '--format=%T'], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        missing_infrastructure('no Slurm cluster answers (start one with slurm/cluster.sh start, or use tests/run.sh): '
                               + proc.stderr.strip())


def jupyter_kernel(tmp_path, monkeypatch):
    """A kernelspec 'python3' for this interpreter and this checkout, found first through JUPYTER_PATH
    (a user's own 'python3' kernelspec may name another Python); returns ``(nbformat, NotebookClient)``.
    Fails (under CI) or skips unless nbclient, nbformat and ipykernel are installed."""
    import importlib.util
    import json
    missing = [m for m in ('nbformat', 'nbclient', 'ipykernel') if importlib.util.find_spec(m) is None]
    if missing:
        missing_infrastructure('{} not installed: pip install nbclient nbformat ipykernel'.format(', '.join(missing)))
    import nbformat
    from nbclient import NotebookClient
    spec_dir = tmp_path / 'jupyter' / 'kernels' / 'python3'
    spec_dir.mkdir(parents=True)
    pythonpath = os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    (spec_dir / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'hither_fs test', 'language': 'python', 'env': {'PYTHONPATH': pythonpath}}))
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
    monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'runtime'))
    monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
    return nbformat, NotebookClient


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

"""Types for a user's editor and mypy: the package ships ``py.typed`` and a job has its
function's return type (mypy, run on a small typed script)."""

import os
import shutil
import subprocess
import sys

import hither_fs as hi
from conftest import REPO, missing_infrastructure

SCRIPT = os.path.join('tests', 'typed', 'uses_hither.py')


def test_py_typed_ships_with_the_package():
    assert os.path.isfile(os.path.join(os.path.dirname(hi.__file__), 'py.typed'))


def test_mypy_sees_a_jobs_result_type(tmp_path):
    """As a user runs mypy on a script of theirs, outside this repository."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        missing_infrastructure("mypy is not installed: pip install -e '.[test]'")
    on_a_path = subprocess.run([sys.executable, '-c', 'import importlib.machinery as m, sys; '
                                'sys.exit(m.PathFinder.find_spec("hither_fs") is None)'],
                               cwd=str(tmp_path), timeout=60).returncode == 0
    if not on_a_path:  # mypy reads sys.path's directories, not an editable install's import hook
        missing_infrastructure("hither_fs is installed behind an import hook that mypy cannot follow: install it "
                               "with `pip install .`, or `pip install -e . --config-settings editable_mode=compat` "
                               "(tests/run.sh does)")
    shutil.copy(os.path.join(REPO, SCRIPT), str(tmp_path / 'uses_hither.py'))
    proc = subprocess.run([sys.executable, '-m', 'mypy', '--no-error-summary', '--hide-error-context',
                           '--no-color-output', '--cache-dir', str(tmp_path / 'cache'), 'uses_hither.py'],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.stdout.splitlines() in ([
        'uses_hither.py:13: note: Revealed type is "hither_fs.job.Job[{}]"'.format(int_name),
        'uses_hither.py:19: error: Incompatible types in assignment (expression has type "int", variable has '
        'type "str")  [assignment]',
    ] for int_name in ('int', 'builtins.int')), proc.stdout + proc.stderr

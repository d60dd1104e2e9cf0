"""Types for a user's editor and mypy: the package ships ``py.typed`` and a job has its
function's return type (mypy, run on a small typed script)."""

import os
import subprocess
import sys

import hither_fs as hi
from conftest import REPO, missing_infrastructure

SCRIPT = os.path.join('tests', 'typed', 'uses_hither.py')


def test_py_typed_ships_with_the_package():
    assert os.path.isfile(os.path.join(os.path.dirname(hi.__file__), 'py.typed'))


def test_mypy_sees_a_jobs_result_type(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        missing_infrastructure("mypy is not installed: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, '-m', 'mypy', '--follow-imports=silent', '--no-error-summary',
                           '--hide-error-context', '--no-color-output', '--cache-dir', str(tmp_path / 'cache'),
                           SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(SCRIPT)]
    assert lines == [
        SCRIPT + ':13: note: Revealed type is "hither_fs.job.Job[builtins.int]"',
        SCRIPT + ':19: error: Incompatible types in assignment (expression has type "int", variable has type '
                 '"str")  [assignment]',
    ] or lines == [
        SCRIPT + ':13: note: Revealed type is "hither_fs.job.Job[int]"',
        SCRIPT + ':19: error: Incompatible types in assignment (expression has type "int", variable has type '
                 '"str")  [assignment]',
    ], proc.stdout + proc.stderr

"""The code a job runs is the code it was submitted with; changed code is noticed
(hither_fs.codeenv.capture_source, hither_fs.runtime.code)."""

import importlib
import os
import sys
import warnings

import pytest

import hither_fs as hi
from conftest import REPO, TESTS, run_python
from hither_fs.runtime import code
from hither_fs.runtime.code import FunctionNotFoundError, import_function

MODULE_V1 = '''
import os, time
import hither_fs as hi

@hi.function('gate_{name}', '0.1.0')
def gate_{name}(path):
    while not os.path.exists(path):
        time.sleep(0.02)
    return 1

@hi.function('{name}', '0.1.0')
def {name}(x):
    return x + 1
'''


def write_module(directory, name, body):
    path = directory / (name + '_mod.py')
    path.write_text(body)
    return path


def load(directory, name):
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(name + '_mod')
        return importlib.reload(module)
    finally:
        sys.path.remove(str(directory))


def test_a_worker_runs_the_code_as_submitted_not_as_the_file_is_now(root_path, tmp_path, parallel):
    name = 'edited_while_queued'
    path = write_module(tmp_path, name, MODULE_V1.format(name=name))
    module = load(tmp_path, name)
    go = str(tmp_path / 'go')
    with hi.Config(job_handler=parallel(1)):
        upstream = getattr(module, 'gate_' + name).run(path=go)
        job = getattr(module, name).run(x=upstream)
    # edited while the job waits for its upstream job, without a version bump
    path.write_text(MODULE_V1.format(name=name).replace('x + 1', 'x + 1000'))
    os.utime(path, (1, 1))  # even an old mtime, as a restored file has: the bytes count, not the time
    open(go, 'w').close()
    assert job.wait(timeout=60) == 2
    # a job submitted now runs the new code
    with hi.Config(job_handler=parallel(1)):
        assert getattr(load(tmp_path, name), name).run(x=1).wait(timeout=60) == 1001


def test_a_script_edited_after_submission_still_runs_as_submitted(root_path, tmp_path):
    script = tmp_path / 'script.py'
    go = tmp_path / 'go'
    script.write_text(MODULE_V1.format(name='script_edited') + '''
import sys
with hi.Config(job_handler=hi.ParallelJobHandler(1)):
    job = script_edited.run(x=gate_script_edited.run(path=sys.argv[1]))
    print(job.id, flush=True)
    sys.stdin.readline()  # the test edits this file now
    print(job.wait(timeout=60))
''')
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.Popen([sys.executable, str(script), str(go)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    script.write_text(script.read_text().replace('x + 1', 'x + 1000'))
    go.touch()
    out, err = proc.communicate('\n', timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ['2']


def test_the_submitted_source_is_checked_against_its_hash(root, tmp_path):
    blob = root.store.put_bytes(b'def f():\n    return 1\n')
    spec = {'name': 'f', 'version': '1', 'module': '__main__', 'file': str(tmp_path / 'gone.py'), 'source': blob}
    function, _ = import_function(spec, root.store)
    assert function() == 1  # the file is gone: its submitted source is what runs
    assert import_function(spec, root.store)[0]() == 1  # read once per process (a warm runner's jobs share it)
    code._preloaded.clear()  # as in a new process, which reads the blob again:
    path = root.store.blob_path(blob)
    os.chmod(path, 0o644)
    with open(path, 'wb') as f:
        f.write(b'def f():\n    return 666\n')
    with pytest.raises(hi.CorruptFileError, match='content hash'):
        import_function(spec, root.store)
    os.remove(path)
    with pytest.raises(FunctionNotFoundError, match='is gone from the root'):
        import_function(spec, root.store)


def test_a_cache_hit_from_other_code_warns_once_and_code_change_chooses(root_path, tmp_path, recwarn):
    name = 'changed_cached'
    path = write_module(tmp_path, name, MODULE_V1.format(name=name))
    with hi.Config(job_cache=hi.JobCache()):
        assert getattr(load(tmp_path, name), name).run(x=1).wait() == 2
        path.write_text(MODULE_V1.format(name=name).replace('x + 1', 'x + 1000'))
        f = getattr(load(tmp_path, name), name)
        with pytest.warns(hi.CodeChangedWarning, match="'changed_cached' version 0.1.0.*Bump the version"):
            assert f.run(x=1).wait() == 2  # the old result, as before, but said
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # once per function
            assert f.run(x=1).wait() == 2
            with hi.Config(code_change='ignore'):
                assert f.run(x=1).wait() == 2
            with hi.Config(code_change='rerun'):
                assert f.run(x=1).wait() == 1001  # runs again, and its result replaces the entry
            hither_fs_submit = sys.modules['hither_fs.submit']
            hither_fs_submit._warned_code_change.clear()
            assert f.run(x=1).wait() == 1001  # the entry is the new code's now: no warning
    with pytest.raises(ValueError, match='code_change must be one of'):
        hi.Config(code_change='sometimes')


def test_a_handler_made_above_the_function_definitions_works(root_path, tmp_path):
    script = tmp_path / 'above.py'
    script.write_text('''
import hither_fs as hi
jh = hi.ParallelJobHandler(num_workers=1)  # as the docs' "assume job handler jh has been set"

@hi.function('defined_below_handler', '0.1.0')
def defined_below_handler(x):
    return x * 2

with hi.Config(job_handler=jh):
    print(defined_below_handler.run(x=21).wait(timeout=60))
''')
    proc = run_python(str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['42']


def test_a_package_that_imports_its_module_still_runs_the_submitted_code(root_path, tmp_path, parallel):
    # pkg/__init__.py imports the function's module: the worker meets it imported from the edited file
    pkg = tmp_path / 'edited_pkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('from .mod import pkg_value, gate_pkg_value\n')
    (pkg / 'mod.py').write_text(MODULE_V1.format(name='pkg_value'))
    sys.path.insert(0, str(tmp_path))
    try:
        import edited_pkg
    finally:
        sys.path.remove(str(tmp_path))
    go = str(tmp_path / 'go')
    with hi.Config(job_handler=parallel(1)):
        job = edited_pkg.pkg_value.run(x=edited_pkg.gate_pkg_value.run(path=go))
    (pkg / 'mod.py').write_text(MODULE_V1.format(name='pkg_value').replace('x + 1', 'x + 1000'))
    open(go, 'w').close()
    assert job.wait(timeout=60) == 2



def test_a_functions_location_is_the_callers_own_copy(tmp_path):
    """``location()`` is worked out once per code object (a reload makes a new one); each
    call hands out its own copy, which the caller may change."""
    name = 'located_once'
    write_module(tmp_path, name, MODULE_V1.format(name=name))
    fn = getattr(load(tmp_path, name), name)
    where = fn.location()
    assert where['file'] == str(tmp_path / (name + '_mod.py')) and where['import_root'] == str(tmp_path)
    where['file'] = 'changed by the caller'
    assert fn.location()['file'] == str(tmp_path / (name + '_mod.py'))
    again = getattr(load(tmp_path, name), name)  # reloaded: a new code object
    assert again.__wrapped__.__code__ is not fn.__wrapped__.__code__
    assert again.location() == fn.location()


def test_a_container_job_submitted_by_a_job_takes_the_bytes_that_job_runs(root, tmp_path):
    """A job submitting container jobs of its own module, after the module's file was edited:
    their code environment holds the bytes the job runs (its ``__hither_source__``), as jobs
    without a container get them, not the file as it is now."""
    from hither_fs import codeenv
    path = write_module(tmp_path, 'nested', MODULE_V1.format(name='nested'))
    module = load(tmp_path, 'nested')
    module.__hither_source__ = root.store.put_file(str(path))  # what hither_fs.runtime.code sets in a job
    path.write_text(MODULE_V1.format(name='nested').replace('x + 1', 'x + 2'))  # edited meanwhile
    try:
        manifest = codeenv.read_manifest(root.store, codeenv.capture(module.nested, root.store)['manifest'])
        assert b'x + 1' in root.store.get_bytes(manifest['nested_mod.py'])
    finally:
        sys.modules.pop('nested_mod', None)


ARGV_SCRIPT = '''
import argparse, os, sys
import hither_fs as hi

parser = argparse.ArgumentParser()
parser.add_argument('tag')
args = parser.parse_args()  # at top level, no __main__ guard: it runs again in each job
if os.environ.get('HITHER_FS_JOB_ID') and args.tag == 'exit-in-job':
    sys.exit(3)

@hi.function('tagged', '0.1.0')
def tagged(x):
    return '{}-{}'.format(args.tag, x)

with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=1)):
    job = tagged.run(x=1)
    try:
        print('RESULT', job.wait(timeout=60))
    except hi.JobError as exc:
        print('ERROR', exc)
'''


def test_a_scripts_top_level_sees_its_own_command_line_in_the_job(root_path, tmp_path):
    """The script runs again in each job up to its first job-starting line: with the command
    line it was run with, not the worker's (its argparse failed, or its globals were wrong)."""
    script = tmp_path / 'tagged.py'
    script.write_text(ARGV_SCRIPT)
    proc = run_python(str(script), 'experimentA', env={'HITHER_FS_ROOT': root_path})
    assert 'RESULT experimentA-1' in proc.stdout, proc.stdout + proc.stderr
    proc = run_python(str(script), 'exit-in-job', env={'HITHER_FS_ROOT': root_path})
    assert "exited (SystemExit: 3) while its top level ran again in the job" in proc.stdout, proc.stdout + proc.stderr

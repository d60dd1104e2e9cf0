"""Reliability and security: who may write what a worker runs, what is never
unpickled or handed to a shell, which paths a spec may name, and what bad input gets.

Real worker processes on real roots. Job files are hand-edited, made
world-writable or replaced the way a person - or someone else with write
access - could do it with a shell, and every test looks at what happened on
disk. The tests pass as root and as an unprivileged user (tests/run.sh): none
relies on permission bits stopping the test process itself.
"""

import ast
import glob
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid

import numpy as np
import pytest

import hither_fs as hi
import hither_fs.submit
from conftest import REPO, TESTS, run_python
from hither_fs import codeenv
from hither_fs.runtime.files import CorruptFileError
from jobfuncs import add, counted, echo, read_file
from test_faults import QueueOnly, start_worker, stop

PACKAGE = os.path.join(REPO, 'hither_fs')
CLI = 'import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))'


def edit_json(path, change):
    """Hand-edit a JSON file in the root (as a person with an editor would)."""
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, 'w') as f:
        json.dump(data, f)


def spec_path(job):
    return os.path.join(job.directory, 'spec.json')


def set_arg(job, name, value):
    edit_json(spec_path(job), lambda spec: spec['args'].__setitem__(name, value))


def package_sources():
    files = sorted(glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True))
    assert len(files) > 20, files  # the scan below really looks at the package
    return [(path, ast.parse(open(path).read(), filename=path)) for path in files]


def everything_under(top, skip):
    """Every path under ``top`` except the subtree ``skip``, with size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


# -- 1. who may write what a worker runs ------------------------------------------------------

def test_worker_refuses_a_job_whose_spec_every_user_can_write(root, tmp_path):
    """A job whose spec.json is world-writable (chmod o+w) - so that anyone could have put
    their code in it - fails with a PermissionError saying why, without running; the same
    worker runs the other jobs. (What the worker checks is the file it reads the job from:
    its owner and its mode, from the same open; a job directory that others can write
    could hold another user's spec.json, which fails the same check by its owner.)"""
    log = str(tmp_path / 'ran.log')
    with hi.Config(job_handler=QueueOnly('sec-perm')):
        good = counted.run(x=2, log=log)
        open_spec = counted.run(x=3, log=log)
    path = spec_path(open_spec)
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_IWOTH)
    w = start_worker(root, 'sec-perm')
    try:
        assert good.wait(timeout=60) == 4
        with pytest.raises(PermissionError) as info:
            open_spec.wait(timeout=60)
        assert isinstance(info.value, hi.JobError)
        assert str(info.value).startswith(
            'refusing to run job {}: {} is writable by every user (mode '.format(open_spec.id, path)), info.value
        assert open_spec.status == 'error'
        assert w.poll() is None  # the worker carries on
    finally:
        stop([w])
    with open(log) as f:
        assert f.read() == '2\n'  # the refused job never ran


def test_a_permissive_umask_makes_nothing_refusable(root):
    """Under the umasks 002 and 000 a private root's files still come out 0600 (hither_fs sets
    the modes itself), so the worker runs the job."""
    old = os.umask(0o000)
    try:
        with hi.Config(job_handler=QueueOnly('sec-umask')):
            job = add.run(x=20, y=22)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spec_path(job)).st_mode) == 0o600
    w = start_worker(root, 'sec-umask', preexec_fn=lambda: os.umask(0o002))
    try:
        assert job.wait(timeout=60) == 42
    finally:
        stop([w])


# -- 2. nothing is ever unpickled --------------------------------------------------------------------

class _Payload:
    """Unpickling this creates a directory: proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_crafted_object_array_blob_is_refused_and_never_unpickled(root, tmp_path):
    """A hand-made object-array .npy, stored under its right sha1 and put into a queued job's
    arguments (and into a finished job's result), is refused naming the blob; its pickle never runs
    and the worker survives."""
    marker = str(tmp_path / 'unpickled')
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    data = buf.getvalue()
    sha1 = hashlib.sha1(data).hexdigest()
    blob = root.store.blob_path(sha1, '.npy')
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, 'wb') as f:
        f.write(data)
    # the blob is live: loading it with pickles allowed runs the payload
    proc = run_python('import sys, numpy; numpy.load(sys.argv[1], allow_pickle=True)', blob)
    assert proc.returncode == 0 and os.path.isdir(marker), proc.stderr
    os.rmdir(marker)

    ref = {'__hither__': 'ndarray', 'sha1': sha1, 'dtype': 'object', 'shape': [1]}
    with hi.Config(job_handler=QueueOnly('sec-pickle')):
        bad = echo.run(x=np.arange(3))
        good = echo.run(x='still fine')
    set_arg(bad, 'x', ref)
    w = start_worker(root, 'sec-pickle')
    try:
        assert good.wait(timeout=60) == 'still fine'
        with pytest.raises(hi.JobError, match='refused to load') as info:
            bad.wait(timeout=60)
        assert info.value.type_name == 'CorruptFileError' and blob in str(info.value)
        assert w.poll() is None
    finally:
        stop([w])
    # the submitting side reads results the same way
    edit_json(os.path.join(good.directory, 'state.json'), lambda r: r['result'].__setitem__('value', ref))
    with pytest.raises(CorruptFileError, match='refused to load'):
        hi.get_job(good.id).get_result()
    assert not os.path.exists(marker)


def test_no_pickle_in_the_package():
    """No module of hither_fs imports pickle or a pickle-based library, and every np.load and
    np.save says allow_pickle=False (np.save's default is True)."""
    unsafe = {'pickle', '_pickle', 'cPickle', 'dill', 'cloudpickle', 'shelve', 'marshal', 'joblib', 'copyreg'}
    numpy_io = 0
    for path, tree in package_sources():
        for node in ast.walk(tree):
            where = '{}:{}'.format(path, getattr(node, 'lineno', '?'))
            if isinstance(node, ast.Import):
                assert not {a.name.split('.')[0] for a in node.names} & unsafe, where
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or '').split('.')[0] not in unsafe, where
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in unsafe, where  # importlib.import_module('pickle') and the like
            elif isinstance(node, ast.Call):
                kw = {k.arg: k.value for k in node.keywords}
                if 'allow_pickle' in kw:
                    assert isinstance(kw['allow_pickle'], ast.Constant) and kw['allow_pickle'].value is False, where
                f = node.func
                if (isinstance(f, ast.Attribute) and f.attr in ('load', 'save', 'savez', 'savez_compressed')
                        and isinstance(f.value, ast.Name) and f.value.id in ('np', 'numpy')):
                    assert 'allow_pickle' in kw, where
                    numpy_io += 1
    assert numpy_io >= 2  # store: save and load (fsck reads only an array's header)


# -- 3. paths in a spec stay inside the root ----------------------------------------------------------

def test_spec_paths_that_climb_out_of_the_root_fail_the_job_and_touch_nothing(root, tmp_path):
    """Hand-edited specs whose upstream job ids or blob sha1s are paths ('../../etc',
    '../../../etc/passwd', or '../outside' where a decoy waits) fail with an error naming the
    bad value; nothing outside the root is read or written, and the worker goes on."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    # decoys where the paths would lead if they were used: root/jobs/../../outside, root/store/../../outside
    (outside / 'state.json').write_text('{"status": "finished", "result": {"value": 1000}}')
    np.save(str(outside / 'decoy.npy'), np.array([1000.0]))
    (outside / 'decoy').write_text('stolen')
    src = tmp_path / 'input.txt'
    src.write_text('mine')
    before = everything_under(str(tmp_path), root.path)

    q = 'sec-paths'
    with hi.Config(job_handler=QueueOnly('sec-paths-nobody')):
        up = add.run(x=1, y=1)  # never runs: keeps `down` pending
    with hi.Config(job_handler=QueueOnly(q)):
        cases = [(add.run(x=1, y=1), 'x', {'__hither__': 'job', 'id': '../outside'},
                  "not a hither_fs job id: '../outside'"),
                 (add.run(x=1, y=1), 'x', {'__hither__': 'job', 'id': '../../etc'},
                  "not a hither_fs job id: '../../etc'"),
                 (echo.run(x=np.arange(2.0)), 'x', {'__hither__': 'ndarray', 'sha1': '../outside/decoy',
                                                    'dtype': 'float64', 'shape': [1]},
                  "not a sha1: '../outside/decoy'"),
                 (echo.run(x=np.arange(2.0)), 'x', {'__hither__': 'ndarray', 'sha1': '../../../etc/passwd',
                                                    'dtype': 'float64', 'shape': [1]},
                  "not a sha1: '../../../etc/passwd'"),
                 (read_file.run(f=hi.File(str(src))), 'f', {'__hither__': 'file', 'sha1': '../outside/decoy',
                                                            'name': 'decoy'},
                  "not a sha1: '../outside/decoy'")]
        down = add.run(x=up, y=1)
        good = add.run(x=2, y=3)
    for job, name, value, _ in cases:
        set_arg(job, name, value)
    assert down.status == 'pending'

    def climb(spec):
        spec['upstream'] = ['../outside']
        spec['args']['x'] = {'__hither__': 'job', 'id': '../outside'}
    edit_json(spec_path(down), climb)
    cases.append((down, None, None, "names upstream job '../outside', which is not a hither_fs job id"))

    w = start_worker(root, q)
    try:
        assert good.wait(timeout=60) == 5
        for job, _, _, message in cases:
            with pytest.raises(ValueError, match=re.escape(message)):
                job.wait(timeout=60)
        assert w.poll() is None
    finally:
        stop([w])
        up.cancel()
    assert everything_under(str(tmp_path), root.path) == before


def test_job_ids_and_queue_names_are_checked_before_anything_is_written(root_path, tmp_path):
    """hi.get_job('../x') and friends raise ValueError; a queue name with '/' (or '..', or a newline)
    is refused by every handler and by the worker command, and no job is written."""
    root = hi.Root.get(root_path)
    for bad in ('../x', '../../etc', '/etc/passwd', '0123456789abcdef/..', '0123456789abcdef\n', ''):
        with pytest.raises(ValueError, match='not a hither_fs job id'):
            hi.get_job(bad)
    before = everything_under(str(tmp_path), None)
    for bad in ('a/b', '../evil', '/tmp/evil', '..', 'local\n', ''):
        with pytest.raises(ValueError, match='bad queue name'):
            with hi.Config(job_handler=QueueOnly(bad)):
                echo.run(x=np.arange(3))
        with pytest.raises(ValueError, match='bad queue name'):
            hi.ParallelJobHandler(queue_name=bad)
        with pytest.raises(ValueError, match='bad queue name'):
            hi.SlurmJobHandler(queue_name=bad)
    with pytest.raises(ValueError, match='bad queue name'):
        hi.RemoteJobHandler(compute_resource_id='../evil')
    assert everything_under(str(tmp_path), None) == before  # not even an argument blob was stored
    proc = run_python(CLI, 'worker', '--root', root.path, '--queue', '../evil')
    assert proc.returncode == 2 and "bad queue name '../evil'" in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr


def test_stray_files_in_the_index_directories_block_nothing(root):
    """Files that are not tickets in queue/, pending/ and running/ (a note, a hand-made '..' ticket
    sorting first) and a pending job with a damaged spec: workers skip or fail just those, pipelines
    still flow, idle workers still exit, and fsck names the strays (--repair removes them)."""
    q = 'sec-strays'
    strays = [os.path.join(root.layout.queue_dir(q), '00000000000000000000-..'),
              os.path.join(root.layout.queue_dir(q), 'README'),
              os.path.join(root.layout.pending, 'notes.txt'),
              os.path.join(root.layout.running, 'junk')]
    for path in strays:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write('not a ticket\n')
    with hi.Config(job_handler=QueueOnly(q)):
        first = add.run(x=1, y=2)
        second = add.run(x=first, y=3)
        damaged = add.run(x=first, y=4)
    with open(spec_path(damaged), 'w') as f:
        f.write('{"function": {"na')
    assert second.status == 'pending'
    w = start_worker(root, q)
    try:
        assert second.wait(timeout=60) == 6
        with pytest.raises(hi.JobError, match='spec.json: not valid JSON'):
            damaged.wait(timeout=60)
        assert w.poll() is None
    finally:
        stop([w])
    assert hi.SlurmJobHandler().demand(root, q, [], cap=100) == 0  # no allocations for strays
    # a worker whose submitter is gone drains and exits: strays are not work left
    lone = start_worker(root, q, '--parent-pid', '1')
    assert lone.wait(timeout=60) == 0
    proc = run_python(CLI, '--root', root.path, 'fsck')
    for path in strays:
        assert '{}: not a ticket'.format(path) in proc.stdout, proc.stdout + proc.stderr
    proc = run_python(CLI, '--root', root.path, 'fsck', '--repair')
    assert 'Traceback' not in proc.stderr
    assert [p for p in strays if os.path.exists(p)] == []


def test_code_environment_paths_stay_inside(root, tmp_path):
    """A container job's code manifest 'sha1' or function file that climbs out (to a directory
    outside the root, or an absolute path) is refused; the file there is never executed."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    marker = tmp_path / 'evil-ran'
    (outside / 'evil.py').write_text('open({!r}, "w").close()\n\n\ndef add(x, y):\n    return x + y\n'.format(
        str(marker)))
    # root/code/envs/../../../outside is a directory: it must not become the job's code
    with pytest.raises(ValueError, match=r"not a sha1: '\.\./\.\./outside'"):
        codeenv.materialize(root, '../../outside')

    with hi.Config(job_handler=QueueOnly('sec-codeenv-nobody')):
        job = add.run(x=1, y=2)
    env_dir = tmp_path / 'env'  # stands for the unpacked environment, as bound into a container
    env_dir.mkdir()
    try:
        for attempt, file in enumerate(['../outside/evil.py', str(outside / 'evil.py')], start=1):
            edit_json(spec_path(job), lambda spec: spec.update(
                container='/images/unused', code={'manifest': '0' * 40, 'module': '__main__', 'file': file}))
            # what a container runs: python3 -m hither_fs.runtime.execute --out DIR --code DIR ROOT JOB
            out = tmp_path / 'scratch-{}'.format(attempt)
            out.mkdir()
            proc = run_python('import sys, hither_fs.runtime.execute as e; sys.exit(e.main())',
                              '--out', str(out), '--code', str(env_dir), root.path, job.id)
            assert proc.returncode == 1, proc.stderr
            with open(str(out / 'outcome.json')) as f:
                error = json.load(f)['error']
            assert "unsafe function file {!r} in the job's code environment".format(file) in error['message']
            assert not marker.exists()
    finally:
        job.cancel()


# -- 4. no shell ----------------------------------------------------------------------------------------

def test_shell_metacharacters_in_arguments_are_just_data(root_path, parallel, tmp_path):
    """Arguments, dict keys and file names full of shell syntax travel as data, in process and on
    a worker: nothing they spell is run."""
    marker = tmp_path / 'pwned'
    decoy = tmp_path / 'decoy'
    decoy.mkdir()
    (decoy / 'keep').write_text('keep')
    evil = ('$(touch {m}); touch {m}; `touch {m}` | touch {m} && rm -rf {d} || touch {m} > {m} < /dev/null & '
            '\'"\\ * ? ~ {{}} [a] !! # %s\n\tnext line $HOME ${{HOME}}').format(m=marker, d=decoy)
    relative = 'pwned-{}'.format(uuid.uuid4().hex[:8])  # a file name cannot hold '/': touch in the cwd
    odd = tmp_path / "in;$(touch {0})`touch {0}`|&<>*?'\" {0}.txt".format(relative)
    odd.write_text(evil)
    payload = {'arg': evil, evil: [evil, (evil,)]}
    assert echo.run(x=payload).wait() == payload
    with hi.Config(job_handler=parallel(1)):
        assert echo.run(x=payload).wait(timeout=60) == payload
        assert read_file.run(f=hi.File(str(odd))).wait(timeout=60) == evil
    assert not marker.exists() and (decoy / 'keep').read_text() == 'keep'
    for cwd in (os.getcwd(), REPO, str(tmp_path)):
        assert not os.path.exists(os.path.join(cwd, relative))


def test_container_image_url_with_shell_metacharacters_fails_cleanly(root_path, parallel, monkeypatch):
    """hi.Config(container='docker://x/y;touch /tmp/pwned-...') for a function with @hi.container: the
    job fails with a ContainerError (where Apptainer runs: its pull of that one URL failed), no file
    is made, and the same worker runs the next job."""
    from containerfuncs.funcs import sumsqr_in_container
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'TRUE')
    marker = '/tmp/hither-fs-pwned-{}'.format(uuid.uuid4().hex)
    url = 'docker://x/y;touch {} && touch {}'.format(marker, marker)
    handler = parallel(1)
    try:
        with hi.Config(job_handler=handler, container=url):
            job = sumsqr_in_container.run(x=np.array([1, 2]))
            with pytest.raises(hi.JobError) as info:
                job.wait(timeout=120)
        assert info.value.type_name == 'ContainerError'
        assert job.spec['container'] == url
        if shutil.which('singularity'):  # tests/run.sh: real Apptainer got the URL as one argument
            assert 'could not pull container image ' + url in str(info.value)
        else:  # no container runtime here: the job still fails as a job, clearly
            assert "no 'singularity' command on PATH" in str(info.value)
        with hi.Config(job_handler=handler):
            after = echo.run(x='next')
            assert after.wait(timeout=60) == 'next'
        assert after.get_runtime_info()['worker'] == job.get_runtime_info()['worker']
        assert not os.path.exists(marker)
    finally:
        if os.path.exists(marker):
            os.unlink(marker)


def test_no_shell_in_the_package():
    """hither_fs has no shell=True, os.system, os.popen, os.exec*/spawn*, subprocess.getoutput or
    pty.spawn, and every subprocess it starts gets an argument list, never a command string."""
    banned = {('subprocess', 'getoutput'), ('subprocess', 'getstatusoutput'), ('pty', 'spawn'),
              ('commands', 'getoutput'), ('os', 'system'), ('os', 'popen')}
    starts = 0
    for path, tree in package_sources():
        for node in ast.walk(tree):
            where = '{}:{}'.format(path, getattr(node, 'lineno', '?'))
            if isinstance(node, ast.ImportFrom) and node.module in ('os', 'subprocess', 'pty', 'commands'):
                for alias in node.names:
                    assert (node.module, alias.name) not in banned, where
                    assert not alias.name.startswith(('exec', 'spawn')), where
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == 'shell':
                    assert isinstance(kw.value, ast.Constant) and kw.value.value is False, where
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                mod, name = f.value.id, f.attr
                assert (mod, name) not in banned, where
                assert not (mod == 'os' and name.startswith(('exec', 'spawn'))), where
                if mod == 'subprocess' and name in ('run', 'Popen', 'call', 'check_call', 'check_output'):
                    starts += 1
                    first = node.args[0] if node.args else None
                    assert not isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)), where
                    assert not (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
                                and first.func.attr in ('format', 'join')), where
    assert starts >= 2  # local workers (handlers) and Slurm commands (slurm)


def test_sbatch_script_passes_a_root_path_full_of_shell_syntax_as_one_argument(tmp_path):
    """The one shell script of hither_fs (the sbatch template) hands values over as quoted
    variables: a root whose path is shell syntax is served as that path, and nothing it spells runs."""
    template = os.path.join(PACKAGE, 'templates', 'worker.sbatch')
    weird = str(tmp_path / "root $(touch pwned) `touch pwned`; touch pwned & 'q' \"dq\" * ${HOME}")
    with hi.Config(root=weird, job_handler=QueueOnly('sec-sbatch')):
        job = add.run(x=2, y=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(HITHER_FS_ROOT=weird, HITHER_FS_QUEUE='sec-sbatch', HITHER_FS_PYTHON=sys.executable,
               HITHER_FS_TIME_LIMIT='0-00:05:00', HITHER_FS_IDLE_TIMEOUT='1', HITHER_FS_SLOTS='1',
               PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.run(['bash', template], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert job.wait(timeout=10) == 4
    assert sorted(os.listdir(str(tmp_path))) == [os.path.basename(weird)]  # no 'pwned' anywhere


# -- 5. bad input gets a clear error ---------------------------------------------------------------------

@hi.function('security_returns_a_set', '0.1.0')
def security_returns_a_set():
    return {1, 2}


def test_a_result_that_cannot_be_stored_names_the_problem(root_path):
    """A function returning a set fails its job with a TypeError naming the result and the type."""
    with pytest.raises(TypeError, match='result of security_returns_a_set: set is not allowed'):
        security_returns_a_set.run().wait()


def test_hi_wait_with_a_timeout_that_expires_names_the_job(root_path):
    """hi.wait(timeout=...) raises TimeoutError naming the job still unfinished (which goes on)."""
    for earlier in list(hither_fs.submit._jobs):  # hi.wait() waits for this process's jobs:
        if not earlier.is_done():                 # those of earlier tests must not be first
            earlier.cancel()
    with hi.Config(job_handler=QueueOnly('sec-nobody')):
        job = add.run(x=1, y=1)
    try:
        with pytest.raises(TimeoutError, match=r'job {} \(add\) did not finish within 0.3 s \(status: queued\)'
                           .format(job.id)):
            hi.wait(timeout=0.3)
        assert job.status == 'queued'
    finally:
        job.cancel()


@pytest.mark.parametrize('path', ['/proc/hither-fs-test-root', '/proc/self/hither-fs/root'])
def test_root_on_a_file_system_that_refuses_it(path):
    """A root where no directory can be made (/proc: as good as read-only, for root too) is a
    RootError naming the path, the place that refused and what to do."""
    with pytest.raises(hi.RootError) as info:
        hi.Root(path)
    message = str(info.value)
    assert message.startswith('cannot create hither_fs root at {}: '.format(path)), message
    assert 'the file system holding /proc' in message or 'read-only file system' in message, message
    assert 'choose another directory' in message


def test_root_below_a_file(tmp_path):
    """A root path that runs through a file names that file."""
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(hi.RootError, match='{} is a file, not a directory'.format(tmp_path / 'afile')):
        hi.Root(str(tmp_path / 'afile' / 'root'))


@pytest.mark.parametrize('args, env, message', [
    (['--root', '/proc/hither-fs-test-root', 'worker'], {},
     'hither-fs: cannot create hither_fs root at /proc/hither-fs-test-root: '),
    (['--root', '/proc/hither-fs-test-root', 'ls'], {},
     'hither-fs: /proc/hither-fs-test-root is not a hither_fs root'),
    (['ls'], {'HITHER_FS_ROOT': '  '}, 'hither-fs: HITHER_FS_ROOT is set but malformed'),
])
def test_cli_reports_a_bad_root_in_one_line(args, env, message):
    """The command line says what is wrong with the root in one line, without a traceback."""
    proc = run_python(CLI, *args, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and 'Traceback' not in proc.stderr, proc.stderr

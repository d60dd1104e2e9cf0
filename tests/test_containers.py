"""Container jobs in real Apptainer, driven through spython.

The test image is a sandbox directory with Debian's python3 and numpy, built
by tests/apptainer/build.sh; tests/run.sh puts the `singularity` wrapper on
PATH. These tests fail (never skip) when Apptainer cannot run it.
"""

import ast
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import hither_fs as hi
from conftest import missing_infrastructure, run_python
from containerfuncs.funcs import (container_facts, fails_in_container, gpu_probe, sleep_in_container,
                                  sumsqr_in_container, uses_local_code)
from hither_fs import codeenv
from hither_fs.attempts import scratch_root
from oci_registry import Registry, make_oci_layout

CACHE = os.environ.get('HITHER_FS_TEST_CACHE', '/var/tmp/hither_fs-test')
IMAGE = os.path.join(CACHE, 'images', 'bookworm-numpy')


@pytest.fixture(scope='module', autouse=True)
def apptainer_works():
    """Fail every test here, with the reason, unless Apptainer runs the test image."""
    how = ('build it with `sudo bash tests/apptainer/build.sh` and run the tests with `sudo bash tests/run.sh` '
           '(Apptainer must run as an unprivileged user)')
    if not os.path.isdir(IMAGE):
        missing_infrastructure('the container test image {} is missing: {}'.format(IMAGE, how))
    try:
        proc = subprocess.run(['singularity', 'exec', '--containall', '--cleanenv', IMAGE, 'python3', '-c',
                               'import numpy'], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_infrastructure('cannot run `singularity` ({}): {}'.format(exc, how))
    if proc.returncode != 0:
        missing_infrastructure('`singularity exec {}` failed with code {}: {}\n{}'.format(
            IMAGE, proc.returncode, proc.stderr.strip()[-2000:], how))


@pytest.fixture(autouse=True)
def singularity_env(monkeypatch):
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'TRUE')
    monkeypatch.setenv('HITHER_FS_IMAGE_FORMAT', 'sandbox')


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    """A loopback registry serving the test image as docker://127.0.0.1:PORT/hither/test:latest."""
    layout = str(tmp_path_factory.mktemp('oci') / 'layout')
    layer = make_oci_layout(IMAGE, layout)
    reg = Registry(layout)
    reg.layer = layer
    yield reg
    reg.close()


@pytest.fixture
def pull_env(monkeypatch, tmp_path):
    monkeypatch.setenv('APPTAINER_NOHTTPS', '1')  # the loopback registry speaks plain HTTP
    monkeypatch.setenv('APPTAINER_CACHEDIR', str(tmp_path / 'apptainer-cache'))
    return str(tmp_path / 'apptainer-cache')


def container_processes(job_id):
    """Host processes with a job's id on their command line: ``[(pid, command line)]``."""
    found = []
    for p in psutil.process_iter(['pid', 'cmdline', 'status']):
        if p.info['status'] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
            if job_id in ' '.join(p.info['cmdline'] or []):
                found.append((p.pid, ' '.join(p.info['cmdline'])))
    return found


def with_descendants(pids):
    """Those processes and everything below them (Apptainer's starter, appinit, ...)."""
    found = set(pids)
    for pid in pids:
        try:
            found.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return found


def alive(pids):
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # bwrap's are reaped by init in ~1 s
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out waiting for ' + what
        time.sleep(0.05)


# -- running in the container ------------------------------------------------------------

def test_job_runs_in_the_container_with_a_clean_environment(root_path, parallel, tmp_path, monkeypatch):
    # things of the host that must not reach the job
    home = tmp_path / 'home'
    site_dir = home / '.local' / 'lib' / 'python3.11' / 'site-packages'
    site_dir.mkdir(parents=True)
    (site_dir / 'leaky_user_module.py').write_text('X = 1\n')
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('HITHER_LEAK_TEST', 'leaky')
    monkeypatch.setenv('APPTAINERENV_HITHER_LEAK_TEST2', 'leaky')
    monkeypatch.setenv('PYTHONPATH', os.environ.get('PYTHONPATH', '') + os.pathsep + str(site_dir))

    with hi.Config(job_handler=parallel(1), container=IMAGE):
        job = container_facts.run()
        facts = job.wait(timeout=120)
    assert facts['in_apptainer']
    assert (facts['python'], facts['numpy']) != (sys.version, np.__version__)
    assert facts['numpy'] != np.__version__ and facts['python'] != sys.version
    assert not facts['user_site'] and not facts['user_module_found']
    assert 'HITHER_LEAK_TEST' not in facts['env'] and 'HITHER_LEAK_TEST2' not in facts['env']
    assert facts['hither_fs_file'].startswith(os.path.join(root_path, 'code', 'runtime'))  # the stand-in
    # it starts in its run's scratch directory on the node's own disk (bound into the container)
    assert facts['cwd'] == os.path.join(scratch_root(job.get_state()['worker']), job.id + '.0')
    assert job.get_console_output() == {'stdout': 'hello from the container\n', 'stderr': 'and to stderr\n'}
    info = job.get_runtime_info()
    assert info['image'] == IMAGE and info['image_path'] == IMAGE
    assert info['container_exit_code'] == 0
    for key in ('host', 'worker', 'start', 'end', 'wall_seconds'):
        assert key in info
    spec = job.spec
    assert spec['container'] == IMAGE and spec['code']['module'] == 'containerfuncs.funcs'


def test_seeds_pipeline_example_runs_in_containers(root_path):
    proc = run_python('examples/container_pipeline.py',
                      env={'HITHER_FS_EXAMPLE_IMAGE': IMAGE, 'HITHER_USE_SINGULARITY': 'TRUE'})
    assert proc.returncode == 0, proc.stderr
    assert 'x = [16 25]  product = [16. 25.]' in proc.stdout
    assert 'ran in ' + IMAGE in proc.stdout
    ran = []
    for dirpath, _, files in os.walk(os.path.join(root_path, 'jobs')):
        if 'state.json' in files:
            with open(os.path.join(dirpath, 'state.json')) as f:
                ran.append(json.load(f)['runtime'])
    assert len(ran) == 3 and all(r['image'] == IMAGE and r['container_exit_code'] == 0 for r in ran)


def test_default_handler_runs_container_jobs_too(root_path):
    with hi.Config(container=IMAGE):
        job = container_facts.run()
        facts = job.wait(timeout=120)
    assert facts['in_apptainer'] and facts['numpy'] != np.__version__
    assert job.get_runtime_info()['in_process']


def test_error_in_the_container_keeps_type_message_traceback(root_path, parallel):
    with hi.Config(job_handler=parallel(1), container=IMAGE):
        job = fails_in_container.run(message='bad input')
        with pytest.raises(ValueError, match='bad input') as info:
            job.wait(timeout=120)
    assert 'funcs.py' in info.value.remote_traceback
    assert 'raise ValueError(message)' in info.value.remote_traceback


def test_gpu_request_passes_nv(root_path, parallel):
    with hi.Config(job_handler=parallel(1), container=IMAGE):
        job = gpu_probe.run()
        assert job.wait(timeout=120) is False  # no GPU on this machine, but the job runs
    assert '--nv' in job.get_runtime_info()['container_command']


# -- code environment -------------------------------------------------------------------

def test_local_modules_and_additional_files_inside(root_path, parallel, root):
    with hi.Config(job_handler=parallel(1), container=IMAGE):
        job = uses_local_code.run(x=np.array([1.0, 2.0]))
        out = job.wait(timeout=120)
        again = uses_local_code.run(x=np.array([5.0]))
        assert again.wait(timeout=120)['scaled'].tolist() == [15.0]
    assert out['scaled'].tolist() == [3.0, 6.0]
    assert out['greeting'] == 'hello from a sibling module' and out['depth'] == 2
    assert out['files'] == ['__init__.py', 'funcs.py', 'helpers.py', 'params.config', 'sub']
    assert out['init_size'] == 0  # the package's own __init__ (which imports psutil) stayed home
    # the same code is stored once: one manifest, one unpacked environment
    code = job.spec['code']
    assert again.spec['code']['manifest'] == code['manifest']
    envs = os.listdir(os.path.join(root_path, 'code', 'envs', code['manifest'][:2]))
    assert envs == [code['manifest']]
    files = codeenv.read_manifest(root.store, code['manifest'])
    assert sorted(files) == ['containerfuncs/__init__.py', 'containerfuncs/funcs.py', 'containerfuncs/helpers.py',
                             'containerfuncs/params.config', 'containerfuncs/sub/__init__.py',
                             'containerfuncs/sub/deep.py', 'containerlib/__init__.py']
    assert out['code_writable'] is False  # bound read-only into the container


def test_unsafe_code_environment_paths_are_refused(root_path, root):
    for bad in ('../secret.config', '/etc/passwd', 'sub/*.config', '..'):
        with pytest.raises(ValueError, match='additional_files'):
            hi.function('f_bad_pattern', '0.1.0', additional_files=[bad])
    for bad in ('../evil.py', '/abs/evil.py', 'a/../../evil.py', 'a//b.py', './x.py'):
        blob = root.store.put_bytes(json.dumps({'format': 1, 'files': {bad: root.store.put_bytes(b'x')}}).encode())
        with pytest.raises(codeenv.CodeEnvError, match='unsafe path'):
            codeenv.materialize(root, blob)
    assert not os.path.exists(os.path.join(root_path, 'evil.py'))
    assert not os.path.exists(os.path.join(root_path, 'code', 'evil.py'))


def test_missing_local_module_is_refused_at_run(root_path, tmp_path):
    script = tmp_path / 'script_with_missing_module.py'
    script.write_text(
        'import hither_fs as hi\n'
        '@hi.function("needs_lib", "0.1.0", local_modules=["../no_such_lib"])\n'
        'def needs_lib():\n'
        '    return 1\n'
        'with hi.Config(container="{}", job_handler=hi.ParallelJobHandler(1)):\n'
        '    needs_lib.run()\n'.format(IMAGE))
    proc = run_python(str(script))
    assert proc.returncode != 0
    assert 'local module' in proc.stderr and 'does not exist' in proc.stderr


class FakeFunction:
    """What codeenv.collect needs of a hither function."""

    def __init__(self, file, module='__main__', local_modules=(), additional_files=()):
        self.name = 'f'
        self.file, self.module = file, module
        self.local_modules, self.additional_files = list(local_modules), list(additional_files)

    def location(self):
        return {'name': 'f', 'version': '1', 'module': self.module, 'file': self.file, 'import_root': None}


def test_code_environment_skips_and_limits(tmp_path, monkeypatch):
    d = tmp_path / 'proj'
    for rel in ('main.py', '__init__.py', 'a/b.py', 'a/data.config', 'a/data.bin', '.hidden.py', '.git/x.py',
                'a/.secrets.config',
                '__pycache__/main.cpython-311.pyc', 'venv/lib/site.py', 'elsewhere/e.py'):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text('# ' + rel)
    (d / 'venv' / 'pyvenv.cfg').write_text('')
    os.symlink(str(d / 'elsewhere'), str(d / 'linked'))
    files, entry = codeenv.collect(FakeFunction(str(d / 'main.py'), additional_files=['*.config']))
    assert sorted(files) == ['a/b.py', 'a/data.config', 'elsewhere/e.py', 'main.py']  # '*' takes no hidden file
    files, _ = codeenv.collect(FakeFunction(str(d / 'main.py'), additional_files=['.*.config']))
    assert sorted(files) == ['a/.secrets.config', 'a/b.py', 'elsewhere/e.py', 'main.py']
    assert entry == {'module': '__main__', 'file': 'main.py'}
    files, entry = codeenv.collect(FakeFunction(str(d / 'a' / 'b.py'), module='proj.a.b'))
    assert sorted(files) == ['proj/__init__.py', 'proj/a/__init__.py', 'proj/a/b.py']
    assert files['proj/__init__.py'] is None and entry == {'module': 'proj.a.b', 'file': 'proj/a/b.py'}
    (d / 'runjobs').write_text('# a script without .py')  # ./runjobs: its own file goes in all the same
    files, entry = codeenv.collect(FakeFunction(str(d / 'runjobs')))
    assert sorted(files) == ['a/b.py', 'elsewhere/e.py', 'main.py', 'runjobs'] and entry['file'] == 'runjobs'
    monkeypatch.setattr(codeenv, 'MAX_FILES', 2)
    with pytest.raises(codeenv.CodeEnvError, match='more than 2 files'):
        codeenv.collect(FakeFunction(str(d / 'main.py')))


def test_gpu_is_asked_by_the_function_or_the_job_resources():
    from hither_fs.containers import wants_gpu
    assert wants_gpu({'gpu': True}) and wants_gpu({'gpu': False, 'resources': {'gpus': 1}})
    assert not wants_gpu({'gpu': False, 'resources': {'cpus': 4}}) and not wants_gpu({})


def test_runtime_parts_parse_as_python_38():
    """What runs inside containers must work on their Python (3.8 and newer)."""
    for path in codeenv.runtime_files().values():
        with open(path) as f:
            ast.parse(f.read(), filename=path, feature_version=(3, 8))


# -- images, failures, killing -------------------------------------------------------------

def test_missing_image_fails_fast_and_the_worker_carries_on(root_path, parallel, pull_env):
    handler = parallel(1)
    start = time.monotonic()
    with hi.Config(job_handler=handler, container=os.path.join(root_path, 'no-such-image.sif')):
        missing = sumsqr_in_container.run(x=np.array([1]))
        with pytest.raises(hi.JobError, match='does not exist') as info:
            missing.wait(timeout=60)
    assert info.value.type_name == 'ContainerError'
    with hi.Config(job_handler=handler, container='docker://127.0.0.1:9/nobody/nothing:1'):
        unpullable = sumsqr_in_container.run(x=np.array([2]))
        with pytest.raises(hi.JobError, match='could not pull container image') as info:
            unpullable.wait(timeout=60)
    assert 'connection refused' in str(info.value)
    assert time.monotonic() - start < 30
    with hi.Config(job_handler=handler, container=IMAGE):
        ok = sumsqr_in_container.run(x=np.array([1, 2, 3]))
        assert ok.wait(timeout=120) == 14
    workers = {j.get_runtime_info()['worker'] for j in (missing, unpullable, ok)}
    assert len(workers) == 1  # the same worker ran all three


def test_image_without_python_gives_a_clear_error(root_path, parallel, tmp_path, monkeypatch):
    bare = tmp_path / 'bare-image'
    for d in ('dev', 'proc', 'sys', 'tmp', 'home', 'etc', 'root', 'var/tmp', 'bin'):
        (bare / d).mkdir(parents=True)
    (bare / 'etc' / 'passwd').write_text('')
    (bare / 'etc' / 'group').write_text('')
    monkeypatch.chdir(tmp_path)
    with hi.Config(job_handler=parallel(1), container='bare-image'):  # relative to the submitter's directory
        job = sumsqr_in_container.run(x=np.array([1]))
        with pytest.raises(hi.JobError, match='needs python3 and numpy') as info:
            job.wait(timeout=60)
    assert job.spec['container'] == str(bare)
    assert info.value.type_name == 'ContainerError' and 'python3' in str(info.value)
    assert '[singularity]' in job.get_console_output()['stderr']  # what Apptainer said, for a person


@pytest.mark.parametrize('how', ['cancel', 'timeout'])
def test_cancel_and_timeout_kill_the_container(root_path, parallel, how):
    with hi.Config(job_handler=parallel(1), container=IMAGE, job_timeout=10 if how == 'timeout' else None):
        job = sleep_in_container.run(seconds=600)
        try:
            # its console output shows in the root while it runs
            wait_until(lambda: job.get_console_output()['stdout'] == 'going to sleep\n', 60,
                       'the job to start in its container')
            procs = container_processes(job.id)
            tree = with_descendants([pid for pid, _ in procs])
            assert len(tree) >= 4  # singularity (bwrap here), Apptainer, its init, the job's python3
            assert any('hither_fs.runtime.execute' in cmd and os.path.basename(cmd.split()[0]) == 'python3'
                       for _, cmd in procs), procs
            if how == 'cancel':
                assert job.cancel()
            assert job.wait_done(timeout=60) == ('cancelled' if how == 'cancel' else 'error')
        finally:
            job.cancel()  # a failed check must not leave a 600 s container behind
    wait_until(lambda: not container_processes(job.id) and not alive(tree), 10, 'the container processes to die')
    if how == 'timeout':
        with pytest.raises(hi.JobTimeoutError):
            job.get_result()


def test_twenty_workers_pull_an_image_once(root_path, registry, pull_env):
    url = registry.url('latest')
    handler = hi.ParallelJobHandler(num_workers=20)
    try:
        with hi.Config(job_handler=handler, container=url):
            jobs = [sumsqr_in_container.run(x=np.arange(i + 1)) for i in range(20)]
            results = [j.wait(timeout=240) for j in jobs]
    finally:
        handler.halt()
    assert results == [sum(k * k for k in range(i + 1)) for i in range(20)]
    assert registry.count('GET', 'blobs', registry.layer) == 1
    infos = [j.get_runtime_info() for j in jobs]
    assert sum(1 for i in infos if i['image_pulled']) == 1
    assert len({i['image_sha1'] for i in infos}) == 1 and len({i['image_path'] for i in infos}) == 1
    assert len({i['worker'] for i in infos}) >= 5  # many workers really asked at once
    assert sum(1 for i in infos if 'image_wait_seconds' in i) >= 3
    assert not [f for _, _, fs in os.walk(pull_env) for f in fs]  # Apptainer's own cache is not used
    images = sorted(n for n in os.listdir(os.path.join(root_path, 'images')) if not n.startswith('.'))
    assert [n for n in images if n.endswith('.sandbox')] == [os.path.basename(infos[0]['image_path'])]
    with open(infos[0]['image_path'] + '.json') as f:
        meta = json.load(f)
    assert meta['url'] == url and meta['sha1'] == infos[0]['image_sha1']


def test_a_job_timeout_counts_from_when_the_container_is_ready(root_path, parallel, registry, pull_env):
    """A timeout shorter than the image's pull: the pull is not the job's time (cut short by
    every job's timeout it would start again for each, and the image never arrive)."""
    url = registry.url('latest')
    pulls = registry.count('GET', 'blobs', registry.layer)  # (the registry serves the whole module)
    with hi.Config(job_handler=parallel(2), container=url, job_timeout=1):
        jobs = [sumsqr_in_container.run(x=np.arange(i + 1)) for i in range(2)]
        assert [j.wait(timeout=240) for j in jobs] == [0, 1]
    infos = [j.get_runtime_info() for j in jobs]
    pulled = [i for i in infos if i['image_pulled']]
    assert len(pulled) == 1 and pulled[0]['image_pull_seconds'] > 1  # longer than the job's timeout
    assert registry.count('GET', 'blobs', registry.layer) == pulls + 1


def test_a_failed_pull_is_tried_once_for_many_jobs(root_path, parallel, registry, pull_env):
    url = registry.url('no-such-tag')
    with hi.Config(job_handler=parallel(4), container=url):
        jobs = [sumsqr_in_container.run(x=np.array([i])) for i in range(6)]
        for j in jobs:
            with pytest.raises(hi.JobError, match='could not pull container image .*no-such-tag'):
                j.wait(timeout=120)
    assert registry.count('GET', 'manifests', 'no-such-tag') <= 2  # one pull (Apptainer may ask twice)


def test_sif_images_are_pulled_and_run_too(root_path, parallel, registry, pull_env, monkeypatch):
    # SIF files cannot be mounted in this nested sandbox: Apptainer unpacks them for each run (slow here)
    monkeypatch.setenv('HITHER_FS_IMAGE_FORMAT', 'sif')
    with hi.Config(job_handler=parallel(1), container=registry.url('latest')):
        job = sumsqr_in_container.run(x=np.array([1, 2]))
        assert job.wait(timeout=240) == 5
    info = job.get_runtime_info()
    assert info['image_path'].endswith('.sif') and os.path.isfile(info['image_path'])
    assert info['image_pulled'] and len(info['image_sha1']) == 40
    # a local .sif is used in place, and its hash recorded
    with hi.Config(job_handler=parallel(1), container=info['image_path']):
        local = sumsqr_in_container.run(x=np.array([3]))
        assert local.wait(timeout=240) == 9
    local_info = local.get_runtime_info()
    assert local_info['image'] == local_info['image_path'] == info['image_path']
    assert local_info['image_sha1'] == info['image_sha1']


def test_public_names_are_not_shadowed_by_modules():
    import hither_fs.containers  # noqa: F401  (a module named like hi.container would replace it)
    assert hi.container.__module__ == 'hither_fs.function' and hi.function.__module__ == 'hither_fs.function'


def test_a_notebooks_function_runs_in_a_container(tmp_path, monkeypatch):
    from test_notebook import run_notebook
    run_notebook(tmp_path, monkeypatch, 'HANDLER = hi.ParallelJobHandler(2)', '{{"container": {!r}}}'.format(IMAGE))

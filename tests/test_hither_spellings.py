"""hither's own spellings, each with hither's meaning (README: "Coming from hither").

Code written for the original hither (0.1 - 0.4) with `import hither as hi` replaced by
`import hither_fs as hi`: these tests run such code on real jobs in a fresh root, one test
per row of the README's table, and the spellings that needed hither's servers must fail at
once naming what replaces them.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

import hither_fs as hi
import hither_fs.submit
from conftest import missing_infrastructure, run_python
from hither_fs import codeenv
from hither_fs.compat import NoServerError
from hither_fs.fsck import fsck
from jobfuncs import add, counted, fail, noisy, sleepy
from test_jobs import wait_for_file

CACHE = os.environ.get('HITHER_FS_TEST_CACHE', '/var/tmp/hither_fs-test')
IMAGE = os.path.join(CACHE, 'images', 'bookworm-numpy')


def nobody_serves():
    """A handler whose jobs wait in a queue no worker serves: they stay queued until cancelled."""
    return hi.RemoteJobHandler(compute_resource_id='nobody')


@pytest.fixture(scope='session')
def hither_module(tmp_path_factory):
    """A module written as for hither: @hi.function(..., container=...), with
    @hi.local_modules and @hi.additional_files stacked on it."""
    base = tmp_path_factory.mktemp('hither_code')
    pkg = base / 'analysis'
    pkg.mkdir()
    (base / 'hs_lib').mkdir()
    (base / 'hs_lib' / '__init__.py').write_text('PREFIX = "lib:"\n')
    (pkg / 'data.csv').write_text('1,2,3\n')
    (pkg / 'notes.txt').write_text('not taken along\n')
    (pkg / 'hither_style.py').write_text(textwrap.dedent('''\
        import os
        import hither_fs as hi

        @hi.additional_files(['*.csv'])
        @hi.local_modules(['../hs_lib'])
        @hi.function('hs_reads_csv', '0.1.0', container={image!r})
        def hs_reads_csv():
            import hs_lib
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data.csv')) as f:
                return hs_lib.PREFIX + f.read().strip()

        @hi.function('hs_stacked', '0.1.0')
        @hi.container({image!r})
        def hs_stacked():
            return 1

        @hi.function('hs_keyword_outside', '0.1.0', additional_files=['*.txt'])
        @hi.additional_files(['*.csv'])
        def hs_keyword_outside():
            return 1

        @hi.additional_files(['*.csv'])
        @hi.function('hs_decorator_outside', '0.1.0', additional_files=['*.txt'])
        def hs_decorator_outside():
            return 1
        ''').format(image=IMAGE))
    sys.path.insert(0, str(pkg))
    return importlib.import_module('hither_style')


# -- hi.JobCache ------------------------------------------------------------------------------

def test_jobcache_use_tempdir_remembers_results_in_the_temporary_directory(root_path, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    os.mkdir(str(tmp_path / 'tmp'))
    log = str(tmp_path / 'runs.log')
    with hi.Config(job_cache=hi.JobCache(use_tempdir=True)):
        assert counted.run(x=4, log=log).wait() == 8
    with hi.Config(job_cache=hi.JobCache(use_tempdir=True)):  # a new cache object, as in a second script
        again = counted.run(x=4, log=log)
        assert again.wait() == 8
    with open(log) as f:
        assert f.read() == '4\n'  # ran once: the second answer came from the cache
    cache = hi.JobCache(use_tempdir=True)
    assert os.path.dirname(cache.path) == str(tmp_path / 'tmp')
    assert os.stat(cache.path).st_mode & 0o777 == 0o700
    key = again.spec['key']
    assert os.path.exists(os.path.join(cache.path, key[:2], key + '.json'))
    assert not os.path.exists(os.path.join(root_path, 'cache', key[:2], key + '.json'))  # not in the root's cache


def test_jobcache_use_tempdir_refuses_a_link_planted_in_its_place(root_path, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    os.mkdir(str(tmp_path / 'tmp'))
    os.mkdir(str(tmp_path / 'elsewhere'))
    os.symlink(str(tmp_path / 'elsewhere'), hither_fs.compat.tempdir_cache_path())
    with pytest.raises(PermissionError, match='a symbolic link, not a directory of yours'):
        hi.JobCache(use_tempdir=True)
    with pytest.raises(ValueError, match='path or use_tempdir=True, not both'):
        hi.JobCache(path=str(tmp_path / 'c'), use_tempdir=True)


def test_jobcache_path_keyword_keeps_entries_in_that_directory(root_path, tmp_path):
    log = str(tmp_path / 'runs.log')
    directory = str(tmp_path / 'my_cache')
    with hi.Config(job_cache=hi.JobCache(path=directory)):
        job = counted.run(x=5, log=log)
        assert job.wait() == 10
        assert counted.run(x=5, log=log).wait() == 10
    with open(log) as f:
        assert f.read() == '5\n'
    key = job.spec['key']
    assert os.path.exists(os.path.join(directory, key[:2], key + '.json'))


def test_jobcache_readonly_is_refused_and_says_why(root_path):
    with pytest.raises(ValueError, match=r'readonly=True\) is not supported: the worker that runs a job writes'):
        hi.JobCache(use_tempdir=True, readonly=True)
    assert hi.JobCache(readonly=False).path is None  # the default meaning: entries in the root


@pytest.mark.parametrize('keyword', ['feed_uri', 'feed_name', 'database'])
def test_jobcache_server_keywords_fail_at_once_naming_the_replacement(root_path, keyword):
    with pytest.raises(NoServerError, match=r'hi\.JobCache\({}=\.\.\.\): hither_fs has no .*Instead: .*'
                       r'hi\.JobCache\(\) keeps results in the root'.format(keyword)) as info:
        hi.JobCache(**{keyword: 'feed://0123abc'})
    assert isinstance(info.value, TypeError)


def test_jobcache_cache_failing_keyword_points_to_config(root_path):
    with pytest.raises(TypeError, match=r"hi\.JobCache\(cache_failing=\.\.\.\): hither_fs takes cache_failing in "
                                        r"hi\.Config.*cache_failing=True"):
        hi.JobCache(use_tempdir=True, cache_failing=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        hi.JobCache(no_such_option=1)


# -- hi.function, hi.container, hi.local_modules, hi.additional_files -------------------------

def test_function_container_keyword_is_the_same_as_stacking_container(root_path, hither_module, monkeypatch):
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'TRUE')
    keyword, stacked = hither_module.hs_reads_csv, hither_module.hs_stacked
    assert (keyword.container, keyword.container_gpu) == (stacked.container, stacked.container_gpu) == (IMAGE, False)
    with hi.Config(container=True, job_handler=nobody_serves()):
        job = keyword.run()
    try:
        assert job.spec['container'] == IMAGE  # the job is a container job of that image
    finally:
        job.cancel()
    with hi.Config(job_handler=nobody_serves()):
        plain = keyword.run()  # without Config(container=True) it is not (as in hither)
    try:
        assert plain.spec['container'] is None
    finally:
        plain.cancel()
    with pytest.raises(ValueError, match='needs an image URL or path'):
        hi.function('f', '0.1.0', container='')


def test_additional_files_and_local_modules_decorators_go_into_the_code_environment(hither_module):
    fn = hither_module.hs_reads_csv
    assert fn.additional_files == ['*.csv'] and fn.local_modules == ['../hs_lib']
    files, entry = codeenv.collect(fn)
    assert sorted(files) == ['data.csv', 'hither_style.py', 'hs_lib/__init__.py']  # notes.txt stays home
    assert entry['module'] == 'hither_style'
    with pytest.raises(TypeError, match=r'@hi\.local_modules needs a list of strings'):
        hi.local_modules('../hs_lib')
    with pytest.raises(ValueError, match="additional_files pattern 'sub/x.csv' must be a file name"):
        @hi.additional_files(['sub/x.csv'])
        def f():
            pass


def test_the_outermost_setting_of_additional_files_counts(hither_module):
    assert hither_module.hs_keyword_outside.additional_files == ['*.txt']
    assert hither_module.hs_decorator_outside.additional_files == ['*.csv']
    assert sorted(codeenv.collect(hither_module.hs_decorator_outside)[0]) == ['data.csv', 'hither_style.py']


def test_the_container_stand_in_takes_the_same_spellings(hither_module):
    """Inside a container the module is imported with hither_fs's light stand-in: it must take them too."""
    out = run_python(textwrap.dedent('''\
        import sys
        import hither_fs.runtime.standin as standin
        sys.modules['hither_fs'] = standin  # as in a container, where only the stand-in is there
        sys.path.insert(0, {!r})
        import hither_style as m
        f = m.hs_reads_csv
        print(type(f).__module__, f.container, f.additional_files, f.local_modules,
              m.hs_decorator_outside.additional_files, standin.JobCancelledException.__name__)
        ''').format(os.path.dirname(hither_module.__file__)))
    assert out.stdout.split() == ['hither_fs.runtime.standin', IMAGE, "['*.csv']", "['../hs_lib']", "['*.csv']",
                                  'JobCancelledError'], out.stderr


def test_hither_style_module_runs_in_a_container(root_path, hither_module, monkeypatch):
    """The module's decorators also work inside the container (hither_fs's stand-in there)."""
    if not os.path.isdir(IMAGE) or not shutil.which('singularity'):
        missing_infrastructure('Apptainer and the test image {} are needed: run the tests with tests/run.sh'
                               .format(IMAGE))
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'TRUE')
    monkeypatch.setenv('HITHER_FS_IMAGE_FORMAT', 'sandbox')
    with hi.ParallelJobHandler(1) as jh:
        with hi.Config(container=True, job_handler=jh):
            job = hither_module.hs_reads_csv.run()
    assert job.get_result() == 'lib:1,2,3'
    assert job.get_runtime_info()['image'] == IMAGE


def test_get_function_returns_the_registered_function(root_path):
    assert hi.get_function('add') is add
    assert hi.get_function('add').run(x=2, y=3).wait() == 5
    with pytest.raises(LookupError, match="no hither function named 'nope'"):
        hi.get_function('nope')


def test_duplicate_function_exception():
    with pytest.raises(hi.DuplicateFunctionException, match="two hither functions are registered under the name "
                                                            "'add'") as info:
        @hi.function('add', '0.2.0')
        def add(x, y):
            return x - y
    assert isinstance(info.value, ValueError)


# -- handlers as context managers -------------------------------------------------------------

def test_with_parallel_job_handler_waits_for_its_jobs_then_stops_its_workers(root_path):
    jh = hi.ParallelJobHandler(2)
    try:
        with jh as same:
            assert same is jh
            with hi.Config(job_handler=jh):
                jobs = [sleepy.run(seconds=0.1, result=i) for i in range(4)]
                down = add.run(x=jobs[0], y=10)
            workers = [p for ps in jh._workers.values() for p in ps]
        assert [j.status for j in jobs + [down]] == ['finished'] * 5  # nothing left behind or lost
        assert [j.get_result() for j in jobs] == [0, 1, 2, 3] and down.get_result() == 10
        assert workers and all(p.wait(timeout=10) is not None for p in workers)  # halted, as in hither
        with hi.Config(job_handler=jh):  # and usable again: it starts workers anew
            assert add.run(x=1, y=1).wait(timeout=30) == 2
    finally:
        jh.halt()


def test_with_parallel_job_handler_leaves_its_jobs_running_after_an_exception(root_path, tmp_path):
    jh = hi.ParallelJobHandler(1)
    pid_file = str(tmp_path / 'pid')
    try:
        with pytest.raises(KeyError):
            with jh:
                with hi.Config(job_handler=jh):
                    job = sleepy.run(seconds=0.3, pid_file=pid_file, result='done')
                wait_for_file(pid_file)
                workers = [p for ps in jh._workers.values() for p in ps]
                raise KeyError('the script failed')
        assert workers and all(p.poll() is None for p in workers)  # not halted
        assert job.wait(timeout=30) == 'done'  # not lost
    finally:
        jh.halt()


def test_with_default_job_handler_runs_its_waiting_jobs_before_the_block_ends(root_path, parallel):
    upstream_handler = parallel(1)
    with hi.Config(job_handler=upstream_handler):
        upstream = sleepy.run(seconds=0.2, result=20)
    with hi.DefaultJobHandler() as jh:
        with hi.Config(job_handler=jh):
            down = add.run(x=upstream, y=1)  # in this process, once upstream is done
        assert down.status == 'pending'
    assert down.status == 'finished' and down.get_result() == 21  # without waiting for it: the block did


def test_with_remote_job_handler_waits_for_the_compute_resource(root_path, parallel):
    resource = hi.ComputeResource(compute_resource_id='resource1', job_handler=parallel(2))
    serving = threading.Thread(target=resource.run, kwargs={'poll': 0.01})
    serving.start()
    try:
        with hi.RemoteJobHandler(compute_resource_id='resource1') as jh:
            with hi.Config(job_handler=jh):
                jobs = [add.run(x=i, y=i) for i in range(3)]
        assert [j.status for j in jobs] == ['finished'] * 3
        assert [j.get_result() for j in jobs] == [0, 2, 4]
        assert jobs[0].get_state()['served_by'] == 'resource1'
    finally:
        resource.stop()
        serving.join()


def test_with_slurm_job_handler_waits_then_lets_its_allocations_go(root_path):
    if shutil.which('sinfo') is None or subprocess.run(['sinfo', '--noheader'], capture_output=True).returncode:
        missing_infrastructure('no Slurm cluster answers: run the tests with tests/run.sh')
    from hither_fs.slurm import job_name, squeue_states
    jh = hi.SlurmJobHandler(max_allocations=1, slots=2, idle_timeout=300, squeue_interval=2)
    root = hi.Root.get(root_path)
    try:
        with jh:
            with hi.Config(job_handler=jh):
                jobs = [add.run(x=i, y=1) for i in range(3)]
        assert [j.status for j in jobs] == ['finished'] * 3 and [j.get_result() for j in jobs] == [1, 2, 3]
        # its allocation was let go (hither halted it): it leaves long before its idle_timeout of 300 s
        ours, name = set(jh.history), job_name(root, jobs[0].spec['queue'])
        assert ours
        deadline = time.monotonic() + 60
        while set(squeue_states(name)) & ours:
            assert time.monotonic() < deadline, 'the allocation did not leave'
            time.sleep(0.5)
    finally:
        jh.cancel_allocations(root)


# -- Job methods --------------------------------------------------------------------------------

def test_get_status_returns_hithers_job_statuses(root_path, parallel, tmp_path):
    with hi.Config(job_handler=nobody_serves()):
        queued = add.run(x=1, y=2)
        pending = add.run(x=queued, y=1)
    assert (queued.status, pending.status) == ('queued', 'pending')
    assert queued.get_status() == pending.get_status() == hi.JobStatus.QUEUED  # hither: QUEUED until it runs
    pending.cancel()
    assert pending.status == 'cancelled' and pending.get_status() == hi.JobStatus.ERROR  # as in hither
    queued.cancel()
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=parallel(1)):
        running = sleepy.run(seconds=1.0, pid_file=pid_file, result=1)  # long enough to be seen running
        failing = fail.run(message='no')
    wait_for_file(pid_file)
    assert running.get_status() == hi.JobStatus.RUNNING
    assert running.wait(timeout=30) == 1 and running.get_status() == hi.JobStatus.FINISHED
    failing.wait_done(timeout=30)
    assert failing.get_status() == hi.JobStatus.ERROR == 'error'  # also equal to hither_fs's string


def test_get_result_returns_the_result_or_raises_the_error(root_path):
    assert add.run(x=1, y=2).get_result() == 3  # in-process: run at submission
    with pytest.raises(ValueError, match='bad'):
        fail.run(message='bad').get_result()
    with hi.Config(job_handler=nobody_serves()):
        waiting = add.run(x=1, y=1)
    with pytest.raises(hi.JobNotFinishedError, match='is queued'):
        waiting.get_result()  # hither: "Cannot get result of job that is not finished"
    waiting.cancel()


def test_print_console_out_prints_a_finished_jobs_output(root_path, capsys):
    with hi.Config(job_handler=nobody_serves()):
        waiting = noisy.run(n=1)
    waiting.print_console_out()  # nothing before it ends, as in hither
    assert capsys.readouterr().out == ''
    waiting.cancel()
    job = noisy.run(n=2)
    capsys.readouterr()
    job.print_console_out()
    assert capsys.readouterr().out == 'line 0\nline 1\nto stderr\n'


def test_get_exception_returns_the_jobs_exception(root_path):
    job = fail.run(message='broken input')
    exc = job.get_exception()
    assert isinstance(exc, ValueError) and isinstance(exc, hi.JobError) and 'broken input' in str(exc)
    with pytest.raises(ValueError, match='finished without an error'):
        add.run(x=1, y=1).get_exception()
    with hi.Config(job_handler=nobody_serves()):
        waiting = add.run(x=1, y=1)
    with pytest.raises(hi.JobNotFinishedError):
        waiting.get_exception()
    waiting.cancel()
    assert isinstance(waiting.get_exception(), hi.JobCancelledException)


def test_set_label_returns_the_job_and_persists_in_the_root(root_path):
    with hi.Config(label='from-config'):
        job = add.run(x=1, y=2)
    other = add.run(x=2, y=2)
    assert job.get_label() == 'from-config' and other.get_label() == 'add'  # hither's default: the function name
    assert job.set_label('Job: add') is job  # hither's chaining: f.run(...).set_label(...)
    assert job.get_label() == 'Job: add'
    assert sorted(os.listdir(job.directory)) == ['label.json', 'spec.json', 'state.json']
    out = run_python('import hither_fs as hi; print(hi.get_job({!r}, root={!r}).get_label())'.format(
        job.id, root_path))
    assert out.stdout.strip() == 'Job: add', out.stderr  # any process sees it
    with pytest.raises(ValueError, match='label must be a non-empty string'):
        job.set_label('')
    assert list(fsck(hi.Root.get(root_path))) == []  # fsck has nothing to say about the label file
    with open(os.path.join(job.directory, 'label.json'), 'w') as f:
        f.write('{"label": ')  # damaged: reported, never used
    with pytest.raises(hi.CorruptFileError, match='label.json'):
        job.get_label()


def test_get_job_id_function_name_and_version(root_path):
    job = add.run(x=1, y=1)
    assert job.get_job_id() == job.id
    assert (job.get_function_name(), job.get_function_version()) == ('add', '0.1.0')


# -- errors, reset ------------------------------------------------------------------------------

def test_job_cancelled_exception_is_raised_for_a_cancelled_job(root_path):
    with hi.Config(job_handler=nobody_serves()):
        job = add.run(x=1, y=1)
    job.cancel()
    with pytest.raises(hi.JobCancelledException):
        job.wait()
    assert hi.JobCancelledException is hi.JobCancelledError


def test_reset_forgets_the_jobs_so_far(tmp_path, monkeypatch):
    monkeypatch.setenv('HITHER_FS_ROOT', str(tmp_path / 'root'))
    hither_fs.submit._jobs.clear()
    with hi.Config(job_handler=nobody_serves()):
        forgotten = add.run(x=1, y=1)
    with pytest.raises(TimeoutError):
        hi.wait(timeout=0.05)  # it waits for the queued job...
    hi.reset()
    hi.wait(timeout=0.05)  # ...and no more after hi.reset()
    assert forgotten.status == 'queued'  # the job itself is still there
    with hi.Config(job_handler=nobody_serves()):
        with pytest.raises(RuntimeError, match=r'hi\.reset\(\) inside a hi\.Config block'):
            hi.reset()
    forgotten.cancel()


# -- what needed hither's servers ----------------------------------------------------------------

def test_database_fails_at_once_naming_the_root(root_path):
    with pytest.raises(NoServerError, match=r"hi\.Database\(mongo_url=\.\.\.\): hither_fs has no database server: "
                                            r"jobs, results and cache entries live in the root.*"
                                            r"hi\.RemoteJobHandler\(compute_resource_id='ID'\)"):
        hi.Database(mongo_url='mongodb://localhost:27017', database='hither')


@pytest.mark.parametrize('kwargs, words', [
    ({'database': object(), 'compute_resource_id': 'resource1'}, 'database=...): hither_fs has no database server'),
    ({'event_stream_client': object(), 'compute_resource_id': 'resource1'}, 'no event stream server'),
    ({'compute_resource_uri': 'feed://abc'}, 'compute_resource_uri=...): hither_fs has no kachery-p2p feeds'),
    ({'uri': 'feed://abc'}, 'uri=...): hither_fs has no kachery-p2p feeds'),
    ({'compute_resource_id': 'feed://abc'}, "RemoteJobHandler('feed://abc'): hither_fs has no kachery-p2p feeds"),
])
def test_remote_job_handler_server_keywords_fail_at_once(root_path, kwargs, words):
    with pytest.raises(NoServerError, match=r"{}.*Instead: .*compute_resource_id='ID'".format(
            words.replace('(', r'\(').replace(')', r'\)').replace('.', r'\.'))):
        hi.RemoteJobHandler(**kwargs)


@pytest.mark.parametrize('keyword', ['database', 'kachery', 'compute_resource_uri', 'nodes_with_access',
                                     'job_handlers'])
def test_compute_resource_server_keywords_fail_at_once(root_path, parallel, keyword):
    kwargs = {'compute_resource_id': 'resource1', 'job_handler': parallel(1), keyword: 'default_readwrite'}
    with pytest.raises(NoServerError, match=r'hi\.ComputeResource\({}=\.\.\.\): hither_fs has no .*Instead: '
                       .format(keyword)):
        hi.ComputeResource(**kwargs)


def test_config_download_results_is_accepted_results_are_in_the_root(root_path, parallel):
    with hi.Config(job_handler=parallel(1), download_results=True):
        job = add.run(x=np.arange(3), y=1)
        assert job.wait(timeout=30).tolist() == [1, 2, 3]
    with hi.Config(download_results=False):
        assert hi.get_job(job.id).get_result().tolist() == [1, 2, 3]  # readable anyway, from the root's store
    with pytest.raises(ValueError, match='download_results must be True, False or None'):
        hi.Config(download_results='yes')


@pytest.mark.parametrize('keyword, value, words', [
    ('required_files', ['sha1://0123'], r'no kachery to fetch sha1:// URIs.*Instead: pass the files as hi\.File'),
    ('jhparams', {'cr_partition': 'partition1'}, r'no compute resource partitions.*compute_resource_id'),
])
def test_config_server_keywords_fail_at_once(root_path, keyword, value, words):
    with pytest.raises(NoServerError, match=r'hi\.Config\({}=\.\.\.\): hither_fs has {}'.format(keyword, words)):
        hi.Config(**{keyword: value})
    with pytest.raises(TypeError, match="hi.Config.. got an unexpected keyword argument 'no_such_option'"):
        hi.Config(no_such_option=1)

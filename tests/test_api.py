"""The user-facing API of the seeds, in-process (DefaultJobHandler)."""

import os

import numpy as np
import pytest

import hither_fs as hi
from jobfuncs import add, echo, fail


def test_name_must_match_function_name():
    with pytest.raises(ValueError, match="'MySpecialFunction' does not match .* 'boring_function'"):
        @hi.function('MySpecialFunction', '0.1.0')
        def boring_function():
            return 6


def test_direct_call_and_run(root_path):
    @hi.function('get_the_answer', '0.1.0')
    def get_the_answer():
        return 42
    assert get_the_answer() == 42
    job = get_the_answer.run()
    assert job.wait() == 42
    assert job.status == 'finished'


def test_run_by_name(root_path):
    assert hi.run('add', x=1, y=2).wait() == 3


def test_unknown_name_is_a_clear_error(root_path):
    with pytest.raises(LookupError, match="no hither function named 'nope'"):
        hi.run('nope', x=1)


def test_same_name_twice_with_another_version_is_refused():
    with pytest.raises(ValueError, match="two hither functions are registered under the name 'add'"):
        @hi.function('add', '0.2.0')
        def add(x, y):
            return x - y


def test_bad_keyword_arguments_fail_at_run(root_path):
    with pytest.raises(TypeError, match=r"add.run\(\): .*'z'"):
        add.run(x=1, y=2, z=2)


def test_job_error_is_reraised_with_type_message_and_remote_traceback(root_path):
    job = fail.run(message='bad input 7')
    with pytest.raises(ValueError) as info:
        job.wait()
    err = info.value
    assert isinstance(err, hi.JobError)
    assert err.type_name == 'ValueError'
    assert 'bad input 7' in str(err)
    assert 'raise ValueError(message)' in err.remote_traceback
    assert job.status == 'error'


def test_config_nesting_inherits_unset_values(root_path):
    cache = hi.JobCache()
    with hi.Config(job_cache=cache, job_timeout=5):
        with hi.Config(force_run=True):
            current = hi.Config.current()
            assert current['job_cache'] is cache
            assert current['job_timeout'] == 5
            assert current['force_run'] is True
        assert hi.Config.current()['force_run'] is False
    assert hi.Config.current()['job_cache'] is None


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='job_timeout'):
        hi.Config(job_timeout=-1)
    with pytest.raises(TypeError, match='job_handler'):
        hi.Config(job_handler='fast')
    with pytest.raises(ValueError, match='label must be a non-empty string'):
        hi.Config(label=7)
    with pytest.raises(ValueError, match='job_timeout must be a positive number'):
        hi.Config(job_timeout=float('nan'))
    for name in ('force_run', 'cache_failing', 'rerun_failing'):
        with pytest.raises(ValueError, match='{} must be True or False'.format(name)):
            hi.Config(**{name: 'yes'})
        for fine in (True, False, None, 0, 1, np.bool_(True)):
            hi.Config(**{name: fine})


def test_jobs_record_their_label_and_run(root_path):
    with hi.Config(label='trial'):
        job = add.run(x=1, y=1)
    other = add.run(x=2, y=2)
    assert (job.spec['label'], other.spec['label']) == ('trial', None)
    assert job.spec['run'] == other.spec['run'] and str(os.getpid()) in job.spec['run']


def test_container_is_recorded_in_the_spec(root_path):
    @hi.function('contained', '0.1.0')
    @hi.container('docker://example/image:1')
    def contained():
        return 1
    assert contained.container == 'docker://example/image:1'
    job = contained.run()
    assert job.spec['container'] is None  # not asked for: runs on the host
    assert job.wait() == 1


def test_pipeline_in_process(root_path):
    a = echo.run(x=np.ones((4, 3)))
    b = add.run(x=a, y=a)
    assert np.array_equal(b.wait(), 2 * np.ones((4, 3)))
    assert b.spec['upstream'] == [a.id]


def test_get_job_reattaches(root_path):
    job = add.run(x=2, y=3)
    job.wait()
    again = hi.get_job(job.id)
    assert again.get_result() == 5
    assert again.get_runtime_info()['host']
    with pytest.raises(LookupError, match='no job 0123456789abcdef'):
        hi.get_job('0123456789abcdef')
    with pytest.raises(ValueError, match='not a hither_fs job id'):
        hi.get_job('../../etc')


def test_wait_all_in_process(root_path):
    jobs = [add.run(x=i, y=i) for i in range(3)]
    hi.wait()
    assert [j.get_result() for j in jobs] == [0, 2, 4]


def test_get_result_before_done_says_so(root_path):
    class Nobody(hi.JobHandler):
        """A real handler whose queue no worker serves: jobs stay queued."""
        def queue_for(self, root):
            return 'nobody'
    with hi.Config(job_handler=Nobody()):
        job = add.run(x=1, y=1)
    assert job.status == 'queued'
    with pytest.raises(hi.JobNotFinishedError, match='queued'):
        job.get_result()
    with pytest.raises(TimeoutError, match='did not finish within 0.2 s'):
        job.wait(timeout=0.2)
    assert job.cancel()
    assert job.status == 'cancelled'
    with pytest.raises(hi.JobCancelledError):
        job.wait()


def test_public_names_reprs_and_type_information(root_path):
    import inspect
    import hither_fs
    from hither_fs.containers import ContainerError
    from hither_fs.slurm import SlurmError
    assert hi.ContainerError is ContainerError and hi.SlurmError is SlurmError
    assert hi.CorruptFileError is hither_fs.runtime.files.CorruptFileError
    assert set(hither_fs.__all__) <= set(dir(hi))
    # help(hi.Config) shows each option's real default (not given: inherited, and outside every block that)
    signature = str(inspect.signature(hi.Config))
    assert 'object object' not in signature
    assert signature.startswith('(job_handler=None, container=False, job_cache=None, force_run=False')
    assert "max_attempts=3" in signature and "code_change='warn'" in signature
    from hither_fs.config import DEFAULTS
    for name, value in DEFAULTS.items():
        assert '{}={!r}'.format(name, value) in signature
    assert repr(hi.Config(job_timeout=3, label='x')) == "Config(job_timeout=3, label='x')"
    with hi.Config(max_attempts=5):
        with hi.Config(job_timeout=2):  # an option not given is still inherited
            assert hi.Config.current()['max_attempts'] == 5
    assert repr(hi.ParallelJobHandler(num_workers=2)) == 'ParallelJobHandler(num_workers=2)'
    job = add.run(x=1, y=2)
    assert repr(job) == '<Job {} add (finished)>'.format(job.id)
    # the package says it has type information (PEP 561)
    assert os.path.isfile(os.path.join(os.path.dirname(hither_fs.__file__), 'py.typed'))


def test_a_container_errors_first_line_is_apptainers_fatal_one():
    from hither_fs.containers import _telling_words
    said = 'WARNING: /home/u/.apptainer/cache is not writable\nINFO:    Converting OCI blobs\nFATAL:   while pulling: ' \
           'connection refused'
    assert _telling_words(said).splitlines()[0] == 'FATAL:   while pulling: connection refused'
    assert _telling_words('x' * 3000).endswith('...') and len(_telling_words('x' * 3000)) == 2003


def test_every_exception_a_user_can_meet_is_exported():
    """Each exception class of the package's modules is a public name - except the stand-in's copies
    (inside containers), the protocol's internal signals and private classes."""
    import importlib
    import inspect
    import pkgutil
    import hither_fs
    internal = {'ScriptLoadStop', 'JobGoneError', 'FunctionNotFoundError', 'NotAvailableInContainerError',
                'LinkError', 'JobDirectoryError'}  # signals inside the package, or subclasses of exported ones
    missing = []
    for info in pkgutil.walk_packages(hither_fs.__path__, 'hither_fs.'):
        if info.name.endswith(('standin', '__main__')):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not name.startswith('_') and name not in internal and getattr(hi, name, None) is not obj):
                missing.append('{}.{}'.format(info.name, name))
    assert missing == []


def test_threads_see_the_main_threads_config_blocks(root_path):
    """Jobs submitted from a thread pool inside a block get its handler, cache and label (they
    ran in this process, uncached and unlabelled); a thread's own blocks go on top."""
    from concurrent.futures import ThreadPoolExecutor
    handler, cache = hi.ParallelJobHandler(num_workers=1), hi.JobCache()

    def in_thread(own):
        if own:
            with hi.Config(label='own'):
                return hi.Config.current()
        return hi.Config.current()
    with hi.Config(job_handler=handler, job_cache=cache, label='batch'):
        with ThreadPoolExecutor(2) as pool:
            seen, own = pool.submit(in_thread, False).result(), pool.submit(in_thread, True).result()
    assert seen['job_handler'] is handler and seen['job_cache'] is cache and seen['label'] == 'batch'
    assert own['job_handler'] is handler and own['label'] == 'own'
    with ThreadPoolExecutor(1) as pool:  # the block has ended
        assert pool.submit(in_thread, False).result()['label'] is None
    handler.halt()

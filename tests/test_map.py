"""Batch submission: ``f.map(items, **common)`` and ``hi.map(f, items, **common)``."""

import json
import os

import numpy as np
import pytest

import hither_fs as hi
from hither_fs import protocol
from hither_fs.queue import iter_tickets, queue_names
from hither_fs.runtime.files import dumps
from jobfuncs import add, counted, echo


def runs(log):
    return open(log).read().splitlines() if os.path.exists(log) else []


def job_dirs(root):
    """Every job directory in the root (and any hidden temporary one)."""
    jobs = root.layout.jobs
    if not os.path.isdir(jobs):
        return []
    return [name for shard in os.listdir(jobs) if os.path.isdir(os.path.join(jobs, shard))
            for name in os.listdir(os.path.join(jobs, shard))]


def tickets(root):
    return [name for q in queue_names(root.layout) for _, name in iter_tickets(root.layout, q)]


def test_each_item_is_its_own_job_with_the_results_of_a_run_loop(root_path, root):
    items = [dict(x=k, y=10) for k in range(6)]
    jobs = add.map(items)
    assert all(isinstance(job, hi.Job) for job in jobs)
    assert len({job.id for job in jobs}) == 6
    specs = [protocol.read_spec(root, job.id) for job in jobs]
    assert len({spec['key'] for spec in specs}) == 6
    assert [spec['args'] for spec in specs] == items  # in order
    assert [job.wait() for job in jobs] == [add.run(**item).wait() for item in items]
    assert all(job.status == 'finished' for job in jobs)


def test_spec_is_written_byte_for_byte_as_dumps_writes_it(root_path, root):
    jobs = add.map([dict(x=[1, 'é', {'b': 2, 'a': None}], y=[2.5])], )
    with hi.Config(label='a "label"\nwith a newline'):
        jobs += echo.map([dict(x={'nested': [[], {}, [1, [2]]]})])
    jobs.append(add.run(x=1, y=2))
    for job in jobs:
        raw = open(root.layout.spec_file(job.id), 'rb').read()
        assert raw == dumps(json.loads(raw))


def test_common_arguments_go_to_every_job_as_they_are(root_path):
    jobs = add.map([dict(x=[1]), dict(x=[2, 3])], y=[9, 9])  # a list in common is one value, not zipped
    assert [job.wait() for job in jobs] == [[1, 9, 9], [2, 3, 9, 9]]
    assert [job.wait() for job in hi.map('add', [dict(x=1), dict(x=2)], y=5)] == [6, 7]
    assert [job.wait() for job in hi.map(add, ({'x': k} for k in range(3)), y=0)] == [0, 1, 2]
    assert add.map([]) == []


def test_with_parallel_workers(root_path, parallel):
    with hi.Config(job_handler=parallel(2)):
        jobs = add.map([dict(x=k, y=k) for k in range(20)])
        assert [job.wait(timeout=60) for job in jobs] == [2 * k for k in range(20)]


@pytest.mark.parametrize('handler', ['default', 'parallel'])
def test_cache_hits_within_a_map_and_across(root_path, parallel, tmp_path, handler):
    log = str(tmp_path / 'log')
    config = dict(job_cache=hi.JobCache(str(tmp_path / 'cache')))
    if handler == 'parallel':
        config['job_handler'] = parallel(2)
    with hi.Config(**config):
        first = counted.map([dict(x=1), dict(x=2), dict(x=1)], log=log)
        assert first[0].id == first[2].id  # one key, one job: the second attached to the first
        assert [job.wait(timeout=60) for job in first] == [2, 4, 2]
        assert sorted(runs(log)) == ['1', '2']
        again = counted.map([dict(x=2), dict(x=1), dict(x=3)], log=log)
        assert again[0].status == 'finished' and again[1].status == 'finished'  # known before anything runs
        assert [job.wait(timeout=60) for job in again] == [4, 2, 6]
        assert sorted(runs(log)) == ['1', '2', '3']
        assert counted.run(x=3, log=log).wait(timeout=60) == 6  # a .run() hits what a map computed
    assert sorted(runs(log)) == ['1', '2', '3']


@pytest.mark.parametrize('handler', ['default', 'parallel'])
def test_a_job_as_an_argument_in_a_map(root_path, parallel, handler):
    with hi.Config(job_handler=parallel(2) if handler == 'parallel' else None):
        upstream = add.run(x=1, y=2)
        jobs = add.map([dict(x=upstream, y=k) for k in range(4)])
        assert [job.wait(timeout=60) for job in jobs] == [3, 4, 5, 6]
        chained = add.map([dict(x=job, y=np.int64(0)) for job in jobs])
        assert [job.wait(timeout=60) for job in chained] == [3, 4, 5, 6]
        assert protocol.read_spec(chained[0].root, chained[0].id)['upstream'] == [jobs[0].id]


@pytest.mark.parametrize('items, common, message', [
    ([dict(x=1, y=1), 5], {}, r"add.map\(\): item 1: a int is not a dict of keyword arguments"),
    ([dict(x=1, y=1), dict(x=1, y=1, z=3)], {}, r"add.map\(\): item 1: .*'z'"),
    ([dict(x=1, y=1), dict(x=1, y=1), dict(x=1)], {}, r"add.map\(\): item 2: missing a required argument: 'y'"),
    ([dict(x=1), dict(x=2, y=3)], dict(y=2), r"add.map\(\): item 1: 'y' given both in the item and as a common"),
    ([{'x': 1, 'y': 2}, {1: 2}], {}, r"add.map\(\): item 1: argument names must be strings"),
    (dict(x=[1, 2]), {}, r"add.map\(\): the first argument is a list .* not a dict"),
    ('xy', {}, r"add.map\(\): the first argument is a list .* not str"),
    (5, {}, r"add.map\(\): the first argument is a list .* not int"),
])
def test_bad_input_names_the_item_and_writes_no_job(root_path, root, items, common, message):
    add.run(x=0, y=0).wait()
    before = job_dirs(root)
    with pytest.raises(TypeError, match=message):
        add.map(items, **common)
    assert job_dirs(root) == before
    assert tickets(root) == []


def test_a_value_that_cannot_be_an_argument_names_the_item_and_writes_no_job(root_path, root):
    with pytest.raises(TypeError, match=r"^add.map\(\): item 2: argument 'x': object is not allowed"):
        add.map([dict(x=1), dict(x=2), dict(x=object())], y=1)
    assert job_dirs(root) == []


def test_arguments_too_big_for_a_record_name_the_item_and_write_no_job(root_path, root, monkeypatch):
    from hither_fs import protocol
    monkeypatch.setattr(protocol, 'RECORD_LIMIT', 10000)  # (256 MB; lowered so the test stays small)
    with pytest.raises(ValueError, match=r"item 1: the arguments of this job are 0 MB of JSON, more than a record"):
        echo.map([dict(x=[1]), dict(x=list(range(5000)))])
    assert job_dirs(root) == [] and tickets(root) == []


def test_a_job_of_another_root_names_the_item_and_writes_no_job(root_path, root, tmp_path):
    with hi.Config(root=str(tmp_path / 'other')):
        elsewhere = add.run(x=1, y=1)
    with pytest.raises(ValueError, match=r"item 1: argument 'x': job .* lives in root"):
        add.map([dict(x=1), dict(x=elsewhere)], y=1)
    assert job_dirs(root) == []


def test_hi_map_by_an_unknown_name(root_path):
    with pytest.raises(LookupError, match="no hither function named 'nope'"):
        hi.map('nope', [dict(x=1)])


def test_jobs_of_a_map_are_waited_for_by_hi_wait(root_path, parallel):
    with hi.Config(job_handler=parallel(2)):
        jobs = echo.map([dict(x=k) for k in range(10)])
        hi.wait(60)
        assert all(job.status == 'finished' for job in jobs)


@pytest.mark.parametrize('args', [
    {}, {'x': 1}, {'b': True, 'a': None, 'c': 1.5, 'd': float('nan'), 'e': -float('inf'), 'f': 'é\n"\u2028'},
    {'x': []}, {'x': {}}, {'x': [1, [2, {'z': 1, 'a': [{}]}]]}, {'x': {'__hither__': 'job', 'id': 'ab'}},
    {'x': 2 ** 80, 'y': -0.0, 'z': 1e300},
])
def test_the_fast_spec_encoder_writes_what_dumps_writes(args):
    from hither_fs.submit import _SpecEncoder
    template = {'function': {'name': 'f', 'version': '1'}, 'label': 'a\nb', 'cache': None, 'chdir': True,
                'environment': {}, 'upstream': [], 'timeout': 2.5}
    encoder = _SpecEncoder(template)
    spec = dict(template, args=args, id='0123456789abcdef', upstream=['x', 'y'], key='k')
    assert encoder(spec) == dumps(spec)
    spec = dict(template, args=args, id='0123456789abcdef', label={'a': [1]}, from_cache={'key': 'k'})
    assert encoder(spec) == dumps(spec)


def test_star_import_leaves_the_builtin_map_alone():
    namespace = {}
    exec('from hither_fs import *', namespace)
    assert 'map' not in namespace and callable(hi.map)


def test_each_call_records_its_own_config(root_path, root):
    with hi.Config(label='one'):
        a = add.map([dict(x=1, y=1)])[0]
    with hi.Config(label='two', job_timeout=5):
        b = add.run(x=1, y=2)
    c = add.run(x=1, y=3)
    specs = [protocol.read_spec(root, job.id) for job in (a, b, c)]
    assert [(s['label'], s['timeout']) for s in specs] == [('one', None), ('two', 5), (None, None)]

"""A cache hit reads its entry and writes nothing: the Job it answers with (hither_fs.submit.CacheHit)
behaves as a job, as an input of other jobs too; a damaged entry is a miss."""

import concurrent.futures
import json
import os
import time

import numpy as np
import pytest

import hither_fs as hi
from hither_fs import gc
from hither_fs.cache import cache_key
from hither_fs.submit import CacheHit
from jobfuncs import add, counted, echo, fail, noisy


def runs(log):
    return open(log).read().splitlines() if os.path.exists(log) else []


def tree(path):
    """Every name below ``path`` with its mtime and size: any write shows."""
    seen = {}
    for dirpath, dirs, names in os.walk(path):
        for name in dirs + names:
            st = os.lstat(os.path.join(dirpath, name))
            seen[os.path.relpath(os.path.join(dirpath, name), path)] = (st.st_mtime_ns, st.st_size)
    return seen


def records(root_path):
    """The job records and tokens of a root (jobs/, queue/, pending/, running/)."""
    return {k: v for k, v in tree(root_path).items() if k.split(os.sep)[0] in ('jobs', 'queue', 'pending', 'running')}


def entry_path(cache_dir, key):
    return os.path.join(cache_dir, key[:2], key + '.json')


def test_a_hit_of_the_root_cache_writes_nothing_in_the_root(root_path, tmp_path):
    log = str(tmp_path / 'log')
    with hi.Config(job_cache=hi.JobCache()):
        first = counted.run(x=3, log=log)
        assert first.wait() == 6
        before = tree(root_path)
        hit = counted.run(x=3, log=log)
        assert isinstance(hit, CacheHit) and hit.id == first.id  # the job that computed it
        assert hit.wait() == 6 and hit.result() == 6 and hit.status == 'finished'
        hit.get_runtime_info(), hit.get_console_output(), hit.get_label(), repr(hit)
        hi.wait()
    assert tree(root_path) == before
    assert runs(log) == ['3']


def test_a_hit_of_a_lab_cache_writes_no_job_in_a_fresh_root(tmp_path):
    lab = hi.JobCache(str(tmp_path / 'lab'))
    log = str(tmp_path / 'log')
    with hi.Config(root=str(tmp_path / 'a'), job_cache=lab):
        original = counted.run(x=np.arange(3), log=log)
        assert list(original.wait()) == [0, 2, 4]
        assert counted.run(x=7, log=log).wait() == 14
    fresh = str(tmp_path / 'b')
    hi.Root(fresh)
    with hi.Config(root=fresh, job_cache=lab):
        before = records(fresh)
        hit = counted.run(x=np.arange(3), log=log)  # (its argument goes to the store, as any argument does)
        assert list(hit.wait()) == [0, 2, 4]
        assert hit.id == original.id and hit.root.path == fresh
        assert not os.path.exists(hit.directory)
        assert records(fresh) == before
        everything = tree(fresh)  # (the function's source was stored at its first hit in this process)
        for _ in range(3):
            assert counted.run(x=7, log=log).result() == 14
        assert tree(fresh) == everything
    assert runs(log) == ['[0 1 2]', '7']


def test_a_hit_behaves_as_the_job_that_computed_it(tmp_path):
    lab = hi.JobCache(str(tmp_path / 'lab'))
    with hi.Config(root=str(tmp_path / 'a'), job_cache=lab):
        original = noisy.run(n=2)
        assert original.wait() == 2
    for root in ('a', 'b'):  # the root that ran it, and another
        with hi.Config(root=str(tmp_path / root), job_cache=lab, label='my-label'):
            hit = noisy.run(n=2)
        assert isinstance(hit, hi.Job) and isinstance(hit, concurrent.futures.Future)
        assert hit.id == original.id and hit.function_name == 'noisy' and hit.get_function_version() == '0.1.0'
        assert hit.status == 'finished' and hit.get_status() == hi.JobStatus.FINISHED and hit.is_done()
        assert hit.done() and not hit.running() and not hit.cancelled() and hit.exception() is None
        assert hit.get_result() == hit.wait(timeout=0) == hit.result(timeout=0) == 2
        assert hit.get_state()['status'] == 'finished'
        assert hit.get_runtime_info() == original.get_runtime_info() != {}
        assert hit.get_console_output() == original.get_console_output()
        assert 'line 1' in hit.get_console_output()['stdout']
        assert hit.spec['key'] == original.spec['key']
        assert hit.cancel() is False and hit.status == 'finished'
        done, _ = concurrent.futures.wait([hit], timeout=5)
        assert done == {hit}
        called = []
        hit.add_done_callback(called.append)
        assert called == [hit]
        assert '<Job {} noisy (finished)>'.format(hit.id) == repr(hit)
    assert hit.get_label() == 'my-label'  # not recorded in root b: the label it would be recorded with


def test_each_result_is_a_fresh_object(root_path):
    with hi.Config(job_cache=hi.JobCache()):
        echo.run(x=[1, 2]).wait()
        hit = echo.run(x=[1, 2])
        first = hit.result()
        first.append(3)
        assert hit.result() == [1, 2] and hit.wait() == [1, 2]


def test_a_cached_error_is_a_hit_that_raises(root_path):
    with hi.Config(job_cache=hi.JobCache(), cache_failing=True):
        with pytest.raises(ValueError, match='boom'):
            fail.run(message='boom').wait()
        hit = fail.run(message='boom')
        assert isinstance(hit, CacheHit) and hit.status == 'error'
        with pytest.raises(ValueError, match='boom'):
            hit.result()
        assert isinstance(hit.exception(), ValueError)


def test_a_hit_is_an_input_of_other_jobs(tmp_path):
    lab = hi.JobCache(str(tmp_path / 'lab'))
    log = str(tmp_path / 'log')
    with hi.Config(root=str(tmp_path / 'a'), job_cache=lab):
        a = counted.run(x=np.arange(3), log=log)
        assert list(counted.run(x=a, log=log).wait()) == [0, 4, 8]
    fresh = str(tmp_path / 'b')
    hi.Root(fresh)
    with hi.Config(root=fresh, job_cache=lab):
        before = records(fresh)
        up = counted.run(x=np.arange(3), log=log)
        down = counted.run(x=up, log=log)  # the whole pipeline is cached: still nothing written
        assert isinstance(down, CacheHit) and list(down.wait()) == [0, 4, 8]
        assert records(fresh) == before
        # a job that is not a hit reads its input from the root: the hit gets its record then
        sum_job = add.run(x=up, y=np.ones(3))
        assert list(sum_job.wait()) == [1, 3, 5]
        assert os.path.isdir(up.directory)
        again = hi.get_job(up.id, fresh)
        assert list(again.wait()) == [0, 2, 4] and again.spec['from_cache']['job_id'] == a.id
        assert list(counted.run(x=np.arange(3), log=log).wait()) == [0, 2, 4]  # later hits find that record
        assert list(add.run(x=counted.run(x=np.arange(3), log=log), y=np.ones(3)).wait()) == [1, 3, 5]
    assert runs(log) == ['[0 1 2]', '[0 2 4]']


def test_a_hit_labelled_gets_its_record(tmp_path):
    lab = hi.JobCache(str(tmp_path / 'lab'))
    with hi.Config(root=str(tmp_path / 'a'), job_cache=lab):
        echo.run(x=5).wait()
    with hi.Config(root=str(tmp_path / 'b'), job_cache=lab):
        hit = echo.run(x=5)
        hit.set_label('kept')
        assert hi.get_job(hit.id, str(tmp_path / 'b')).get_label() == 'kept' == hit.get_label()


def test_a_hit_outlives_its_job(root_path, root):
    """gc may remove the job that computed a hit (it keeps the entry and its blobs): the hit still answers."""
    with hi.Config(job_cache=hi.JobCache()):
        job = echo.run(x=np.arange(5.0))
        job.wait()
        hit = echo.run(x=np.arange(5.0))
    old = os.path.getmtime(os.path.join(job.directory, 'state.json')) - 40 * 86400
    os.utime(os.path.join(job.directory, 'state.json'), (old, old))
    assert gc.collect(root, gc.Selection(older_than=30 * 86400)).jobs == [job.id]
    assert not os.path.exists(job.directory)
    assert np.array_equal(hit.result(), np.arange(5.0)) and hit.get_runtime_info() == {}
    with hi.Config(job_cache=hi.JobCache()):
        again = echo.run(x=np.arange(5.0))  # the entry answers, with the same id
        assert again.id == job.id and np.array_equal(again.wait(), np.arange(5.0))
        assert list(add.run(x=again, y=1.0).wait()) == [1.0, 2.0, 3.0, 4.0, 5.0]  # put back as an input


def damage(cache_dir, key, how):
    path = entry_path(cache_dir, key)
    entry = json.load(open(path))
    if how == 'garbage':
        open(path, 'w').write('{"key": "' + key + '", "value": ')
    elif how == 'not json':
        open(path, 'wb').write(b'\x00\xff' * 10)
    elif how == 'other key':
        entry['key'] = '0' * 40
    elif how == 'other function':
        entry['function'] = 'add'
    elif how == 'other version':
        entry['version'] = '9.9.9'
    elif how == 'no job':
        entry['job_id'] = '../../etc'
    elif how == 'bad value':
        entry['value'] = {'__hither__': 'no such kind'}
    elif how == 'missing blob':
        for dirpath, _, names in os.walk(os.path.join(cache_dir, 'store')):
            for name in names:
                os.unlink(os.path.join(dirpath, name))
    elif how == 'damaged blob':
        for dirpath, _, names in os.walk(os.path.join(cache_dir, 'store')):
            for name in names:
                os.chmod(os.path.join(dirpath, name), 0o644)
                with open(os.path.join(dirpath, name), 'r+b') as f:
                    f.seek(-8, 2)
                    f.write(b'\x01' * 8)
    elif how == 'neither value nor error':
        del entry['value']
    if how in ('other key', 'other function', 'other version', 'no job', 'bad value', 'neither value nor error'):
        os.chmod(path, 0o644)
        open(path, 'w').write(json.dumps(entry))
    os.chmod(path, 0o644)


@pytest.mark.parametrize('how', ['garbage', 'not json', 'other key', 'other function', 'other version', 'no job',
                                 'bad value', 'missing blob', 'damaged blob', 'neither value nor error'])
def test_a_damaged_entry_is_a_miss(tmp_path, how):
    lab = str(tmp_path / 'lab')
    log = str(tmp_path / 'log')
    with hi.Config(root=str(tmp_path / 'a'), job_cache=hi.JobCache(lab)):
        job = counted.run(x=np.arange(4.0), log=log)
        job.wait()
    damage(lab, job.spec['key'], how)
    with hi.Config(root=str(tmp_path / 'b'), job_cache=hi.JobCache(lab)):
        again = counted.run(x=np.arange(4.0), log=log)
        assert not isinstance(again, CacheHit)
        assert list(again.wait()) == [0.0, 2.0, 4.0, 6.0]  # run again, right
        assert list(counted.run(x=np.arange(4.0), log=log).wait()) == [0.0, 2.0, 4.0, 6.0]  # its entry now
    assert len(runs(log)) == 2


def test_an_entry_under_another_key_never_answers(root_path, tmp_path):
    """An entry copied to the place of another job's key (another argument) is not that job's result."""
    log = str(tmp_path / 'log')
    cache_dir = os.path.join(root_path, 'cache')
    with hi.Config(job_cache=hi.JobCache()):
        one = counted.run(x=1, log=log)
        one.wait()
        key_of_two = cache_key('counted', '0.1.0', {'x': 2, 'log': log}, {})
        os.makedirs(os.path.dirname(entry_path(cache_dir, key_of_two)), exist_ok=True)
        with open(entry_path(cache_dir, one.spec['key'])) as f, open(entry_path(cache_dir, key_of_two), 'w') as g:
            g.write(f.read())
        assert counted.run(x=2, log=log).wait() == 4
    assert runs(log) == ['1', '2']


def test_the_key_is_the_sha1_of_the_canonical_form():
    """The key's text is made in parts now: the keys of entries written before do not change."""
    import hashlib
    cases = [({'x': 1, 'log': 'p'}, {}), ({'b': [1.5, None, 'é', {'z': 1, 'a': float('nan')}], 'a': {'k': True}}, {}),
             ({'x': {'__hither__': 'job', 'id': '0123456789abcdef'}}, {'0123456789abcdef': 'f' * 40})]
    for args, upstream in cases:
        canon = json.loads(json.dumps(args, allow_nan=True).replace('"id": "0123456789abcdef"', '"key": "' + 'f' * 40 + '"'))
        text = json.dumps({'function': 'fn', 'version': '1.0', 'args': canon}, sort_keys=True, separators=(',', ':'),
                          allow_nan=True)
        assert cache_key('fn', '1.0', args, upstream) == hashlib.sha1(text.encode('utf-8')).hexdigest()


def test_map_answers_hits_and_runs_the_rest(root_path, tmp_path):
    log = str(tmp_path / 'log')
    with hi.Config(job_cache=hi.JobCache()):
        counted.run(x=1, log=log).wait()
        jobs = counted.map([dict(x=x) for x in (1, 2, 1, 3)], log=log)
        assert [isinstance(job, CacheHit) for job in jobs] == [True, False, True, False]
        assert [job.result() for job in jobs] == [2, 4, 2, 6]
        hi.wait()
    assert sorted(runs(log)) == ['1', '2', '3']


def test_in_flight_markers_of_two_roots_in_a_lab_cache_are_all_removed(tmp_path):
    """Root A's job computes a key (marker 0); root B's, started later, computes it too
    (marker 1: A's names another root). Whichever ends first, no marker is left behind
    (A's release removed 0 and left 1 above a gap, where B's release never found it)."""
    roots = hi.Root(str(tmp_path / 'a')), hi.Root(str(tmp_path / 'b'))
    for first, second in ((0, 1), (1, 0)):
        cache = hi.JobCache(str(tmp_path / 'lab-{}'.format(first)))
        key = 'ab' + '0' * 38
        ids = ['a' * 16, 'b' * 16]
        assert cache.claim_in_flight(roots[0], key, 0, ids[0])
        assert cache.in_flight(roots[1], key) == (0, None)  # another root's job: not there for B
        assert cache.claim_in_flight(roots[1], key, 1, ids[1])
        cache.release_in_flight(roots[first], key, ids[first])
        cache.release_in_flight(roots[second], key, ids[second])
        assert [n for n in os.listdir(os.path.join(cache.path, 'ab')) if '.inflight.' in n] == [], first


def test_a_failed_job_whose_error_is_not_cached_yet_answers_cache_failing(root):
    """With cache_failing, a job that failed and is about to cache its error (its worker
    commits first, then records the entry) answers a new submission of its key: it is not
    run again. With rerun_failing it is."""
    from hither_fs import protocol
    from hither_fs.queue import iter_tickets
    from test_faults import QueueOnly
    with hi.Config(job_handler=QueueOnly('cf'), job_cache=hi.JobCache(), cache_failing=True):
        first = fail.run(message='boom')
        [(path, _)] = list(iter_tickets(root.layout, 'cf'))
        claim = protocol.claim(root, path, 'w-a', protocol.read_spec(root, first.id))
        error = protocol.error_record('RuntimeError', 'boom', 'running')
        assert protocol.commit(root, claim, protocol.Outcome(error=error)) == protocol.Status.ERROR
        again = fail.run(message='boom')  # (the worker has not recorded the cache entry yet)
        assert again.id == first.id and list(iter_tickets(root.layout, 'cf')) == []
        with hi.Config(rerun_failing=True):
            rerun = fail.run(message='boom')
        assert rerun.id != first.id and len(list(iter_tickets(root.layout, 'cf'))) == 1
    # never attached to: an error no commit caches, or one whose worker died before caching it
    for kind, age in (('UpstreamJobError', 0), ('RuntimeError', 600)):
        with hi.Config(job_handler=QueueOnly('cf-' + kind), job_cache=hi.JobCache(), cache_failing=True):
            failed = fail.run(message=kind)
            [(path, _)] = list(iter_tickets(root.layout, 'cf-' + kind))
            claim = protocol.claim(root, path, 'w-a', protocol.read_spec(root, failed.id))
            protocol.commit(root, claim, protocol.Outcome(error=protocol.error_record(kind, 'x', 'running')))
            then = time.time() - age
            os.utime(root.layout.state_file(failed.id), (then, then))
            assert fail.run(message=kind).id != failed.id, kind


def test_a_blob_is_linked_between_stores_unless_a_group_shared_one_needs_other_bits(tmp_path):
    """Into a private store a blob is hard-linked (a lab-cache hit costs no copy); into a
    group-shared one only a file with its bits (0660, its group) is: a private root's 0600
    blob is copied, so that the lab's other members can read it."""
    import stat
    from hither_fs.runtime.files import register_tree
    from hither_fs.runtime.store import Store
    private, lab = tmp_path / 'private', tmp_path / 'lab'
    for d in (private, lab):
        d.mkdir()
    os.chmod(str(lab), 0o2770)
    register_tree(str(private), False)
    register_tree(str(lab), True)
    mine, shared, back = Store(str(private / 'store')), Store(str(lab / 'store')), Store(str(tmp_path / 'p2'))
    register_tree(str(tmp_path / 'p2'), False)
    sha1 = mine.put_bytes(b'result bytes')
    shared.copy_blob_from(mine, sha1)
    copied = os.stat(shared.blob_path(sha1))
    assert stat.S_IMODE(copied.st_mode) == 0o660 and copied.st_ino != os.stat(mine.blob_path(sha1)).st_ino
    back.copy_blob_from(shared, sha1)  # a hit in a private root: linked
    assert os.stat(back.blob_path(sha1)).st_ino == copied.st_ino

"""The listing's summaries of the ended jobs (hither_fs.summary), in this process: ``hither-fs ls``
says the same with them as without, and stays right when jobs end, are relabelled or removed
after a summary was written, when a summary is damaged or of a future format, and for a reader
who cannot write the root. Jobs are made with the protocol's own calls (submit, claim, commit):
no worker, milliseconds each."""

import contextlib
import errno
import io
import json
import os
import shutil
import time

import pytest

from hither_fs import cli, fsck, gc, listing, protocol, summary
from hither_fs.protocol import Outcome
from hither_fs.queue import iter_tickets
from hither_fs.root import Root, new_job_id, now_iso

COMMANDS = [[], ['--limit', '0'], ['--limit', '3', '--json'], ['--limit', '0', '--json'], ['--by', 'run'],
            ['--by', 'label', '--json'], ['--by', 'function', '--json'], ['--status', 'error'],
            ['--status', 'finished', '--status', 'queued', '--limit', '4'], ['--label', 'blue', '--json'],
            ['--function', 'g', '--limit', '0'], ['--since', '1h', '--json', '--limit', '0'],
            ['--run', 'run-b', '--by', 'label'], ['--status', 'running'], ['--status', 'damaged', '--json']]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    monkeypatch.delenv('HITHER_FS_SUMMARY', raising=False)
    return Root(str(tmp_path / 'root'))


def submit(root, function='f', run='run-a', label=None):
    spec = {'id': new_job_id(), 'queue': 'q', 'upstream': [], 'created': now_iso(), 'max_attempts': 3,
            'function': {'name': function, 'version': '1'}, 'key': 'k', 'run': run}
    if label:
        spec['label'] = label
    protocol.submit(root, spec)
    return spec['id']


def claim(root, job_id, worker='w-a'):
    [path] = [p for p, name in iter_tickets(root.layout, 'q') if name.endswith('-{}.0.1'.format(job_id))]
    return protocol.claim(root, path, worker, protocol.read_spec(root, job_id))


def end(root, job_id, how='finished', seconds=1.25):
    c = claim(root, job_id)
    runtime = {'start': '2026-11-30T04:00:00.000000Z', 'end': '2026-11-30T04:00:{:09.6f}Z'.format(seconds),
               'host': 'node1', 'worker': 'w-a'}
    if how == 'finished':
        outcome = Outcome(result={'value': 1}, runtime=runtime)
    elif how == 'error':
        outcome = Outcome(error=protocol.error_record('ValueError', 'boom', 'running the job'), runtime=runtime)
    else:
        outcome = Outcome(error=protocol.cancelled_record(job_id, 'by a test'), runtime=runtime)
    assert protocol.commit(root, c, outcome).value == how


def ls(root, *args, summaries=True):
    """What ``hither-fs ls ...`` prints (``summaries=False``: HITHER_FS_SUMMARY=0)."""
    out = io.StringIO()
    old = os.environ.get('HITHER_FS_SUMMARY')
    os.environ['HITHER_FS_SUMMARY'] = '1' if summaries else '0'
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main(['--root', root.path, 'ls'] + list(args)) == 0
    finally:
        if old is None:
            del os.environ['HITHER_FS_SUMMARY']
        else:
            os.environ['HITHER_FS_SUMMARY'] = old
    return out.getvalue()


def ids(root, *args):
    return [r['id'] for r in json.loads(ls(root, *args, '--json', '--limit', '0'))]


def settle():
    """Let the file system's clock move on: a job that changed in this very tick is read, not kept."""
    time.sleep(0.03)


@pytest.fixture
def jobs(root):
    """A root of every kind of job: ended ones of three statuses, labels from Config and from
    set_label, two runs and two functions, queued and running ones, and a damaged one."""
    made = {}
    for i in range(30):
        job_id = submit(root, function='f' if i % 3 else 'g', run='run-a' if i < 20 else 'run-b',
                        label='blue' if i % 7 == 0 else None)
        made[job_id] = 'finished' if i % 5 else 'error' if i % 10 else 'cancelled'
        if i < 26:
            end(root, job_id, made[job_id], seconds=1.25 + i / 1000)
    for job_id in list(made)[26:28]:
        made[job_id] = 'running'
        claim(root, job_id)
    for job_id in list(made)[28:]:
        made[job_id] = 'queued'
    summary.write_label(root, list(made)[4], 'green')
    damaged = submit(root)
    end(root, damaged)
    with open(root.layout.spec_file(damaged), 'w') as f:
        f.write('{"not": json')
    made[damaged] = 'damaged'
    settle()
    return made


def test_ls_says_the_same_with_summaries_cold_and_warm_as_without(root, jobs):
    assert ls(root, '--limit', '0').count('\n') == 33  # a header, 31 jobs, the counts
    for args in COMMANDS:
        without = ls(root, *args, summaries=False)
        shutil.rmtree(root.layout.summaries, ignore_errors=True)
        assert ls(root, *args) == without, args  # cold: the summaries are made
        assert ls(root, *args) == without, args  # warm: read from them
    assert len(os.listdir(root.layout.summaries)) == len(listing.shards(root))
    rows = json.loads(ls(root, '--json', '--limit', '0'))
    assert {r['id']: r['status'] for r in rows} == jobs
    assert sorted(r['label'] for r in rows if r['label']) == ['blue'] * 5 + ['green']
    assert listing.select(listing.job_rows(root), status=['error']) == \
        summary.listing(root).select(status=['error']).rows()


def test_summaries_hold_the_ended_jobs_and_ls_reads_only_the_rows_it_shows(root, jobs, monkeypatch):
    ls(root)
    ended = {j for j, s in jobs.items() if s in protocol.FINAL_VALUES}
    kept = {summary.Shard.row(s, line)['id'] for s in map(lambda n: summary.load(root, n), listing.shards(root))
            if s is not None for line in s.lines()}
    assert kept == ended
    reads, parsed = [], []
    real_state, real_row = protocol.read_state, summary.Shard.row
    monkeypatch.setattr(protocol, 'read_state', lambda r, j: reads.append(j) or real_state(r, j))
    monkeypatch.setattr(summary.Shard, 'row', lambda self, line: parsed.append(line) or real_row(self, line))
    out = ls(root, '--limit', '2')
    assert out.strip().endswith('31 jobs: 20 finished, 3 error, 3 cancelled, 2 running, 2 queued, 1 damaged')
    assert set(reads) == set(jobs) - ended  # the live and the damaged jobs: read each time
    assert len(parsed) <= 2 + len(listing.shards(root))  # the rows shown, and one ahead per shard at most


def test_a_job_that_ends_after_its_summary_was_written_is_listed_as_ended(root, jobs):
    ls(root)
    queued = next(j for j, s in jobs.items() if s == 'queued')
    end(root, queued, 'error')
    assert json.loads(ls(root, '--status', 'error', '--json', '--limit', '0'))[-1]['id'] == queued
    settle()
    ls(root)  # now kept in its shard's summary
    shard = summary.load(root, queued[:2])
    assert queued in {shard.row(line)['id'] for line in shard.lines()} and queued not in shard.others
    assert ls(root, '--limit', '0') == ls(root, '--limit', '0', summaries=False)


def test_a_label_set_after_the_summary_was_written_shows_at_once(root, jobs):
    from hither_fs.job import Job
    ls(root)
    finished = [j for j, s in jobs.items() if s == 'finished']
    Job(finished[0], root).set_label('red')
    summary.write_label(root, finished[1], 'red')
    assert ids(root, '--label', 'red') == sorted(finished[:2], key=lambda j: list(jobs).index(j))
    assert '[red]' in ls(root)
    assert ls(root, '--by', 'label') == ls(root, '--by', 'label', summaries=False)


def test_a_change_the_stamp_cannot_vouch_for_is_found_by_the_job_directory_mtime(root, jobs):
    ls(root)
    job_id = next(j for j, s in jobs.items() if s == 'finished')
    # label.json written straight into the job's directory (not by write_label: the shard's mtime
    # stays), then a new job in the same shard makes the stamp differ
    with open(root.layout.job_file(job_id, protocol.LABEL_FILE), 'w') as f:
        json.dump({'label': 'by-hand'}, f)
    while True:
        other = submit(root)
        if other[:2] == job_id[:2]:
            break
    assert ids(root, '--label', 'by-hand') == [job_id]


def test_jobs_removed_by_gc_or_by_hand_leave_the_listing(root, jobs):
    ls(root)
    gone = [j for j, s in jobs.items() if s in protocol.FINAL_VALUES][:3]
    assert gc.remove_job(root, gone[0]) and gc.remove_job(root, gone[1])
    shutil.rmtree(root.layout.job_dir(gone[2]))
    listed = ids(root)
    assert not set(gone) & set(listed) and len(listed) == len(jobs) - 3
    assert ls(root, '--by', 'run') == ls(root, '--by', 'run', summaries=False)


@pytest.mark.parametrize('damage', ['garbage', 'cut short', 'a flipped byte', 'future format', 'another shard',
                                    'empty', 'a directory'])
def test_a_damaged_or_future_summary_is_not_used_and_is_made_again(root, jobs, damage):
    expected = ls(root, '--limit', '0', summaries=False)
    ls(root)
    name = next(iter(jobs))[:2]
    path = root.layout.summary_file(name)
    with open(path, 'rb') as f:
        data = f.read()
    if damage == 'a directory':
        os.remove(path)
        os.mkdir(path)
    else:
        data = {'garbage': b'{"no": "summary"}\n', 'cut short': data[:len(data) // 2],
                'a flipped byte': data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],
                'future format': data.replace(b'hither_fs-summary 1 ', b'hither_fs-summary 2 ', 1),
                'another shard': summary.decode(data, name).encode().replace(
                    '"shard":"{}"'.format(name).encode(), b'"shard":"zz"'), 'empty': b''}[damage]
        with open(path, 'wb') as f:
            f.write(data)
    assert summary.load(root, name) is None
    assert ls(root, '--limit', '0') == expected
    if damage != 'a directory':
        assert summary.load(root, name) is not None  # made again
    assert ls(root, '--limit', '0') == expected


def test_a_reader_who_cannot_write_the_root_computes_without_saving(root, jobs, monkeypatch):
    expected = ls(root, '--limit', '0', '--json', summaries=False)

    def refused(path, data=b''):
        raise PermissionError(errno.EACCES, 'Permission denied', path)
    monkeypatch.setattr(summary, 'write_new', refused)  # what a reader without write access meets
    assert ls(root, '--limit', '0', '--json') == expected
    assert not os.path.exists(root.layout.summaries)
    monkeypatch.undo()
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    ls(root)  # the owner lists: summaries are written; the reader then reads them
    queued = next(j for j, s in jobs.items() if s == 'queued')
    end(root, queued)
    settle()
    before = {n: os.stat(os.path.join(root.layout.summaries, n)).st_mtime_ns for n in os.listdir(root.layout.summaries)}
    monkeypatch.setattr(summary, 'write_new', refused)
    rows = json.loads(ls(root, '--limit', '0', '--json'))
    assert {r['id']: r['status'] for r in rows}[queued] == 'finished'
    assert before == {n: os.stat(os.path.join(root.layout.summaries, n)).st_mtime_ns
                      for n in os.listdir(root.layout.summaries)}


def test_a_stamp_as_young_as_the_summary_is_not_trusted(root, jobs, monkeypatch):
    real = summary._mtime
    monkeypatch.setattr(summary, '_mtime', lambda path: None if real(path) is None else 1 << 62)  # "in the future"
    ls(root)
    for name in listing.shards(root):
        assert summary.load(root, name).stamp is None  # kept rows are checked one by one next time
    monkeypatch.undo()
    assert ls(root, '--by', 'run') == ls(root, '--by', 'run', summaries=False)


def test_fsck_knows_the_summaries_and_the_label_temp_files(root, jobs):
    ls(root)
    assert [f for f in fsck.fsck(root) if 'summary' in f.path] == []
    name = next(iter(jobs))[:2]
    job_id = next(j for j, s in jobs.items() if s == 'finished' and j[:2] != name)
    state_path = root.layout.state_file(job_id)
    with open(state_path) as f:
        state = json.load(f)
    state['error'] = 'edited by hand'
    with open(state_path, 'w') as f:  # (in place: its shard's mtime stays, the summary is trusted)
        json.dump(state, f)
    with open(root.layout.summary_file(name), 'ab') as f:
        f.write(b'x')
    stray = os.path.join(root.layout.jobs, name, '.label.json.tmp-{}.999999999.0123abcd'.format(os.uname().nodename))
    open(stray, 'w').close()
    findings = {f.path: f for f in fsck.fsck(root, repair=True)}
    assert 'cannot be used' in findings[root.layout.summary_file(name)].problem
    assert 'out of date' in findings[root.layout.summary_file(job_id[:2])].problem
    assert findings[stray].problem == 'temporary file of a writer that died'
    assert not any(f.damage for f in findings.values() if 'summary' in f.path or f.path == stray)
    assert all(findings[p].repaired for p in (stray, root.layout.summary_file(name),
                                               root.layout.summary_file(job_id[:2])))
    assert ls(root, '--limit', '0') == ls(root, '--limit', '0', summaries=False)


def test_many_writers_at_once_each_leave_a_summary_that_is_right(root, jobs):
    import threading
    shutil.rmtree(root.layout.summaries, ignore_errors=True)
    expected = ls(root, '--limit', '0', summaries=False)
    errors = []

    def one():
        try:
            summary.listing(root).select().rows()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and ls(root, '--limit', '0') == expected
    assert not [n for n in os.listdir(root.layout.summaries) if n.startswith('.')]  # no temporary file left


def test_the_claims_make_a_queued_job_running_also_among_summed_up_shards(root, jobs):
    ls(root)
    queued = next(j for j, s in jobs.items() if s == 'queued')
    claim(root, queued, 'w-b')
    row = next(r for r in json.loads(ls(root, '--json', '--limit', '0')) if r['id'] == queued)
    assert (row['status'], row['worker']) == ('running', 'w-b')


def test_gc_brings_the_summaries_of_the_shards_it_emptied_up_to_date(root, jobs):
    ls(root)
    then = time.time() - 3 * 86400
    ended = [j for j, s in jobs.items() if s in protocol.FINAL_VALUES]
    for job_id in ended:
        os.utime(root.layout.state_file(job_id), (then, then))
    stamps = {n: summary.load(root, n).stamp for n in listing.shards(root)}
    plan = gc.collect(root, gc.Selection(statuses={'error'}))
    assert sorted(plan.jobs) == sorted(j for j, s in jobs.items() if s == 'error')
    for name in {j[:2] for j in plan.jobs}:
        found = summary.load(root, name)
        if os.path.isdir(os.path.join(root.layout.jobs, name)):  # up to date again, without the jobs gone
            assert found.stamp != stamps[name]  # (None if gc changed the shard in the very tick it was summed up)
            assert found.stamp in (None, summary.shard_mtime(root, name))
            assert not {found.row(line)['id'] for line in found.lines()} & set(plan.jobs)
        else:
            assert found is None  # the shard went with its last job, and its summary too
    assert ls(root, '--limit', '0') == ls(root, '--limit', '0', summaries=False)
    assert 'error' not in ls(root).splitlines()[-1]

"""Runs and labels on the command line: ``hither-fs ls`` grouped and filtered, unique id
prefixes, ``hither-fs cancel`` of a whole run, label or function (real processes, a real root)."""

import json
import os
import time

import pytest

import hither_fs as hi
from conftest import run_python

SUBMIT = '''
import sys, hither_fs as hi
from jobfuncs import add, echo
label = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='nobody'), label=label):
    for i in range(int(sys.argv[2])):
        add.run(x=i, y=1)
    echo.run(x='queued too')
with hi.Config(label=label):
    print(echo.run(x='done').wait())
'''


def cli(*args):
    return run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', *args)


def submit(label, n):
    proc = run_python(SUBMIT, label, str(n))
    assert proc.returncode == 0, proc.stderr


def runs(root_path):
    proc = cli('ls', '--by', 'run', '--json')
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ls_groups_and_filters_by_run_label_function_status_and_age(root_path):
    submit('first', 2)
    submit('', 7)
    groups = runs(root_path)
    assert [(g['jobs'], g['counts'], g['labels']) for g in groups] == [
        (4, '1 finished, 3 queued', ['first']), (9, '1 finished, 8 queued', [])]
    first, second = groups[0]['run'], groups[1]['run']
    assert first != second and first.split('-')[-1] != second.split('-')[-1]  # one run per process

    unique = next(first[:n] for n in range(1, len(first) + 1) if not second.startswith(first[:n]))
    out = cli('ls', '--run', unique).stdout
    assert out.strip().endswith('4 jobs: 1 finished, 3 queued') and '[first]' in out
    by_pid = json.loads(cli('ls', '--run', first.rsplit('-', 1)[1], '--json').stdout)  # its process id
    assert {r['run'] for r in by_pid} == {first}
    by_label = json.loads(cli('ls', '--label', 'first', '--json').stdout)
    assert len(by_label) == 4 and {r['run'] for r in by_label} == {first}
    assert cli('ls', '--function', 'add', '--status', 'queued').stdout.strip().endswith('9 jobs: 9 queued')
    assert cli('ls', '--since', '1h').stdout.strip().endswith('13 jobs: 2 finished, 11 queued')
    assert cli('ls', '--since', '1h', '--status', 'finished').stdout.strip().endswith('2 jobs: 2 finished')
    functions = json.loads(cli('ls', '--by', 'function', '--json').stdout)
    assert {g['function']: g['jobs'] for g in functions} == {'add': 9, 'echo': 4}
    labels = json.loads(cli('ls', '--by', 'label', '--json').stdout)
    assert {g['label']: g['jobs'] for g in labels} == {'first': 4, '-': 9}
    proc = cli('ls', '--run', 'nope')
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_unique_id_prefixes_name_jobs_everywhere(root_path):
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='nobody')):
        from jobfuncs import add
        jobs = [add.run(x=i, y=0) for i in range(40)]  # enough that two share their first 2 digits
    ids = [j.id for j in jobs]
    by_two = {}
    for job_id in ids:
        by_two.setdefault(job_id[:2], []).append(job_id)
    job_id = ids[0]
    prefix = next(job_id[:n] for n in range(2, 17) if sum(1 for i in ids if i.startswith(job_id[:n])) == 1)
    shown = json.loads(cli('show', prefix).stdout)
    assert shown['spec']['id'] == job_id
    assert cli('logs', prefix).returncode == 0
    shared = next((p for p, members in by_two.items() if len(members) > 1), None)
    if shared is not None:
        proc = cli('show', shared)
        assert proc.returncode == 2 and 'job id {} is ambiguous'.format(shared) in proc.stderr
    proc = cli('cancel', prefix)
    assert proc.returncode == 0 and '{}: cancelled'.format(job_id) in proc.stdout
    assert jobs[0].status == 'cancelled' and jobs[1].status == 'queued'
    for bad in ('z1', '1', ''):
        proc = cli('show', bad)
        assert proc.returncode == 2 and 'is not a job id or a prefix of one' in proc.stderr


def test_cancel_a_whole_run_or_label_asks_first_then_says_what_happened(root_path):
    submit('big', 6)
    submit('small', 1)
    groups = runs(root_path)
    big_run = groups[0]['run']
    proc = cli('cancel', '--run', big_run)  # 7 unfinished jobs, no terminal to ask on: refused
    assert proc.returncode == 2 and '7 jobs match; add --yes to cancel them' in proc.stderr
    assert runs(root_path)[0]['counts'] == '1 finished, 7 queued'
    proc = cli('cancel', '--run', big_run, '--yes')
    assert proc.returncode == 0, proc.stderr
    assert '7 jobs: 7 cancelled, 0 running' in proc.stdout
    groups = runs(root_path)
    assert [g['counts'] for g in groups] == ['1 finished, 7 cancelled', '1 finished, 2 queued']
    proc = cli('cancel', '--label', 'small', '--function', 'add')
    assert proc.returncode == 0 and proc.stdout.count(': cancelled') == 1
    assert runs(root_path)[1]['counts'] == '1 finished, 1 cancelled, 1 queued'
    proc = cli('cancel', '--all', '--yes')
    assert proc.returncode == 0 and ': cancelled' in proc.stdout
    assert [g['counts'] for g in runs(root_path)] == ['1 finished, 7 cancelled', '1 finished, 2 cancelled']
    proc = cli('cancel', '--status', 'finished', '--all')
    assert proc.returncode == 2 and 'only pending, queued, running jobs can be cancelled' in proc.stderr
    proc = cli('cancel')
    assert proc.returncode == 2 and 'name jobs to cancel' in proc.stderr


@pytest.mark.parametrize('answer, cancelled', [('y\n', True), ('\n', False)])
def test_cancel_asks_on_a_terminal(root_path, answer, cancelled):
    import os
    import pty
    import subprocess
    import sys
    submit('', 6)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, '-c', 'import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))',
                             'cancel', '--all'], stdin=secondary, stdout=subprocess.PIPE, stderr=secondary,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    os.close(secondary)
    seen = b''
    while b'[y/N]' not in seen:
        seen += os.read(primary, 1000)
    os.write(primary, answer.encode())
    out, _ = proc.communicate(timeout=60)
    os.close(primary)
    assert b'cancel 7 jobs in ' in seen
    assert proc.returncode == (0 if cancelled else 1)
    counts = runs(root_path)[0]['counts']
    assert counts == ('1 finished, 7 cancelled' if cancelled else '1 finished, 7 queued'), out


def test_a_label_set_after_submission_counts_for_ls_and_gc(root_path):
    from jobfuncs import add
    jobs = [add.run(x=i, y=0) for i in range(3)]
    for j in jobs:
        j.wait(timeout=60)
    time.sleep(0.05)  # (ended a tick ago: kept in their shards' listing summaries, which the label must get past)
    assert cli('ls').stdout.strip().endswith('3 jobs: 3 finished')
    jobs[1].set_label('keep-me-not')
    proc = cli('ls', '--label', 'keep-me-not', '--json')
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [r['id'] for r in listed] == [jobs[1].id]
    from test_gc import age
    for j in jobs:
        age(j, 2)  # older than gc's grace period (made so, as test_gc does)
    proc = cli('gc', '--label', 'keep-me-not')
    assert proc.returncode == 0, proc.stderr
    assert [r['id'] for r in json.loads(cli('ls', '--json').stdout)] == sorted(
        [jobs[0].id, jobs[2].id], key=lambda i: [j.id for j in jobs].index(i))


def test_jobs_with_fields_of_the_wrong_type_show_as_damaged_and_ids_exclude_filters(root_path):
    from jobfuncs import add
    good = add.run(x=1, y=1)
    good.wait(timeout=60)
    bad = add.run(x=2, y=2)
    bad.wait(timeout=60)
    spec_path = os.path.join(bad.directory, 'spec.json')
    with open(spec_path) as f:
        spec = json.load(f)
    spec['function'] = 'not an object'
    with open(spec_path, 'w') as f:
        json.dump(spec, f)
    for args in (['ls'], ['ls', '--by', 'function'], ['cancel', '--all', '--yes'],
                 ['report', '--html', os.path.join(root_path, '..', 'r.html')]):
        proc = cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    rows = json.loads(cli('ls', '--json').stdout)
    assert {r['id']: r['status'] for r in rows} == {good.id: 'finished', bad.id: 'damaged'}
    proc = cli('cancel', good.id, '--all')
    assert proc.returncode == 2 and 'either by id or by' in proc.stderr


def test_live_statuses_are_listed_without_reading_the_ended_jobs(root_path, monkeypatch):
    from jobfuncs import add
    from hither_fs import listing, protocol
    proc = run_python('from jobfuncs import add\nfor i in range(30):\n    add.run(x=i, y=0).wait()')
    assert proc.returncode == 0, proc.stderr
    [ended_run] = [g['run'] for g in runs(root_path)]  # another process: a run of its own, all ended
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='nobody')):
        live = [add.run(x=i, y=1) for i in range(2)]
    reads = []
    real = protocol.read_state
    monkeypatch.setattr(protocol, 'read_state', lambda root, job_id: reads.append(job_id) or real(root, job_id))
    rows = listing.job_rows(hi.Root.get(root_path), live_only=True)  # a spy on the reads, not a stand-in
    assert [r['id'] for r in rows] == [j.id for j in live] and sorted(reads) == sorted(j.id for j in live)
    out = cli('ls', '--status', 'queued').stdout
    assert out.strip().endswith('2 jobs: 2 queued')
    assert cli('ls', '--status', 'running', '--run', ended_run).stdout.strip().endswith('0 jobs')
    proc = cli('cancel', '--run', ended_run, '--yes')
    assert proc.returncode == 0 and 'no unfinished job matches' in proc.stdout
    assert [j.status for j in live] == ['queued', 'queued']


def test_a_run_prefix_is_resolved_among_all_runs_before_anything_is_cancelled(tmp_path, monkeypatch, capsys):
    """In this process. ``cancel --run P`` (and ``ls --status queued --run P``) resolve ``P``
    among all runs, ended ones too, as ``ls --run P`` does: a prefix of the run the user
    means (ended) and of another one (live) is ambiguous, not the other run."""
    from hither_fs import cli as hither_cli
    from hither_fs import protocol
    from hither_fs.queue import iter_tickets
    from hither_fs.root import Root, new_job_id, now_iso
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})
    root = Root(str(tmp_path / 'root'))

    def submit_in(run):
        spec = {'id': new_job_id(), 'queue': 'q', 'upstream': [], 'created': now_iso(), 'max_attempts': 3,
                'function': {'name': 'f', 'version': '1'}, 'key': 'k', 'run': run}
        protocol.submit(root, spec)
        return spec['id']
    mine = submit_in('20261130T100000-nodeA-4242')
    [(path, _)] = list(iter_tickets(root.layout, 'q'))
    protocol.commit(root, protocol.claim(root, path, 'w-a', protocol.read_spec(root, mine)),
                    protocol.Outcome(result={'value': 1}))
    other = submit_in('20261130T100001-nodeB-4243')
    for args in (['cancel', '--run', '20261130T10', '--yes'], ['ls', '--status', 'queued', '--run', '20261130T10']):
        assert hither_cli.main(['--root', root.path] + args) == 2
        assert 'is ambiguous' in capsys.readouterr().err
    assert protocol.read_state(root, other)['status'] == 'queued'
    assert hither_cli.main(['--root', root.path, 'cancel', '--run', '20261130T100000', '--yes']) == 0
    assert 'no unfinished job matches' in capsys.readouterr().out
    assert hither_cli.main(['--root', root.path, 'cancel', '--run', '20261130T100001', '--yes']) == 0
    assert protocol.read_state(root, other)['status'] == 'cancelled' and mine

"""hither-fs du: totals that agree with find and du, hard links once, the jobs' views, and
a root with FIFOs, symlinks and damaged records counted without a hang or a crash."""

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest

import hither_fs as hi
from conftest import run_python
from hither_fs import protocol
from hither_fs.cli import main
from hither_fs.queue import iter_tickets
from hither_fs.usage import AREAS, disk_usage, human
from jobfuncs import add, echo, fail

DAY = 86400


class Nobody(hi.JobHandler):
    """Jobs go to a queue nobody serves: they stay queued."""

    def queue_for(self, root):
        return 'nobody'


@pytest.fixture
def jobs(root):
    """Five real jobs run in this process; two arrays are shared between the echo and add jobs."""
    made = {'echo': echo.run(x=np.arange(1000)), 'add_arrays': add.run(x=np.ones(50), y=np.ones(50)),
            'add_ints': add.run(x=1, y=2), 'fail': fail.run(message='no good')}
    with pytest.raises(ValueError):
        made['fail'].wait()
    with hi.Config(job_handler=Nobody()):
        made['queued'] = echo.run(x=np.ones(50))
    return made


def find_bytes(path):
    out = subprocess.run(['find', path, '-printf', '%s\n'], capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in out.split())


def find_inodes(path):
    out = subprocess.run(['sh', '-c', 'find "$1" | wc -l', 'sh', path], capture_output=True, text=True, check=True)
    return int(out.stdout)


def du_bytes(path):
    out = subprocess.run(['du', '-s', '-B1', path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def blob_size(job, sha1_of, ext='.npy'):
    return os.path.getsize(os.path.join(job.root.path, 'store', sha1_of[:2], sha1_of + ext))


def test_areas_add_up_to_what_find_and_du_count(root, jobs):
    links = [os.path.join(d, n) for d, _, names in os.walk(root.path) for n in names
             if os.lstat(os.path.join(d, n)).st_nlink > 1]
    assert links == []  # find -printf '%s' counts a hard-linked file twice: none here
    usage = disk_usage(root)
    t = usage.total
    assert (t.bytes, t.inodes, t.disk) == (find_bytes(root.path), find_inodes(root.path), du_bytes(root.path))
    for field in ('bytes', 'disk', 'inodes'):
        assert sum(getattr(c, field) for c in usage.areas.values()) == getattr(t, field)
    assert list(usage.areas) == list(AREAS)
    for area in ('jobs', 'store', 'cache', 'workers', 'logs', 'code', 'images'):
        path = os.path.join(root.path, area)
        assert (usage.areas[area].bytes, usage.areas[area].inodes) == (find_bytes(path), find_inodes(path)), area
    live = [os.path.join(root.path, d) for d in ('queue', 'pending', 'running')]
    assert usage.areas['live work'].inodes == sum(map(find_inodes, live))
    assert usage.areas['other'].inodes == 2  # the root itself and root.json
    assert usage.unreadable == []


def test_hard_links_count_once(root, jobs):
    with open(os.path.join(root.path, 'big'), 'wb') as f:
        f.write(b'x' * 100000)
    os.link(os.path.join(root.path, 'big'), os.path.join(root.path, 'logs', 'big-again'))
    usage = disk_usage(root)
    out = subprocess.run(['find', root.path, '-printf', '%i %s\n'], capture_output=True, text=True).stdout
    sizes = dict(line.split() for line in out.splitlines())  # one entry per inode
    assert usage.total.inodes == len(sizes) == find_inodes(root.path) - 1
    assert usage.total.bytes == sum(map(int, sizes.values())) == find_bytes(root.path) - 100000
    assert usage.total.disk == du_bytes(root.path)  # du counts it once too


def test_function_and_status_views_match_the_jobs_made(root, jobs):
    usage = disk_usage(root)
    assert {k: g.jobs for k, g in usage.by_function.items()} == {'echo': 2, 'add': 2, 'fail': 1}
    assert {k: g.jobs for k, g in usage.by_status.items()} == {'queued': 1, 'finished': 3, 'error': 1}
    assert {k: g.jobs for k, g in usage.by_age.items()} == {'< 1 day': 5, '1-7 days': 0, '7-30 days': 0,
                                                          '> 30 days': 0}
    assert usage.all_jobs.jobs == 5
    dirs = [j.directory for j in jobs.values()]
    assert usage.all_jobs.bytes == sum(map(find_bytes, dirs))
    assert usage.all_jobs.inodes == sum(map(find_inodes, dirs))
    assert usage.by_function['add'].bytes == sum(find_bytes(jobs[k].directory) for k in ('add_arrays', 'add_ints'))
    # blobs: arange (echo), ones (add's arguments and the queued echo's), 2 * ones (add's result), and
    # the source of jobfuncs.py as submitted (every job's)
    arange = blob_size(jobs['echo'], jobs['echo'].spec['args']['x']['sha1'])
    ones = blob_size(jobs['add_arrays'], jobs['add_arrays'].spec['args']['x']['sha1'])
    twos = blob_size(jobs['add_arrays'], protocol.read_state(root, jobs['add_arrays'].id)['result']['value']['sha1'])
    source = blob_size(jobs['echo'], jobs['echo'].spec['function']['source'], '')
    assert (usage.by_function['echo'].blobs, usage.by_function['echo'].blob_bytes) == (3, arange + ones + source)
    assert (usage.by_function['add'].blobs, usage.by_function['add'].blob_bytes) == (3, ones + twos + source)
    assert (usage.by_function['fail'].blobs, usage.by_function['fail'].blob_bytes) == (1, source)
    assert (usage.by_status['queued'].blobs, usage.by_status['queued'].blob_bytes) == (2, ones + source)
    # a blob shared by groups counts in each of them, and once in all_jobs: there, the whole store
    store_files = [os.path.join(d, n) for d, _, names in os.walk(root.store.path) for n in names]
    assert usage.all_jobs.blob_bytes == arange + ones + twos + source == sum(map(os.path.getsize, store_files))
    assert sum(g.blob_bytes for g in usage.by_function.values()) == usage.all_jobs.blob_bytes + ones + 2 * source


def test_a_claimed_job_counts_as_running(root, jobs):
    [(ticket, _)] = iter_tickets(root.layout, 'nobody')
    assert protocol.claim(root, ticket, 'w-test-1-abcdef') is not None
    assert {k: g.jobs for k, g in disk_usage(root).by_status.items()} == {'running': 1, 'finished': 3, 'error': 1}


def test_ages_come_from_state_json(root, jobs):
    state = os.path.join(jobs['add_ints'].directory, 'state.json')
    old = time.time() - 40 * DAY
    os.utime(state, (old, old))
    ages = {k: g.jobs for k, g in disk_usage(root).by_age.items()}
    assert ages == {'< 1 day': 4, '1-7 days': 0, '7-30 days': 0, '> 30 days': 1}
    later = disk_usage(root, now=time.time() + 10 * DAY)
    assert [g.jobs for g in later.by_age.values()] == [0, 0, 4, 1]
    assert later.by_age['> 30 days'].bytes == find_bytes(jobs['add_ints'].directory)


DU_JSON = 'import sys, hither_fs.cli as c; sys.exit(c.main(["--root", sys.argv[1], "du", "--json"]))'


def test_fifos_symlinks_and_damage_neither_hang_nor_crash(root, jobs, tmp_path):
    (tmp_path / 'elsewhere').mkdir()
    (tmp_path / 'elsewhere' / 'big').write_bytes(b'y' * 100000)
    os.mkfifo(os.path.join(root.path, 'fifo'))
    os.symlink('/dev/zero', os.path.join(root.path, 'zero'))
    os.symlink(str(tmp_path / 'elsewhere'), os.path.join(root.path, 'elsewhere'))  # never followed
    os.makedirs(os.path.join(root.store.path, 'ff'))
    os.mkfifo(os.path.join(root.store.path, 'ff', 'f' * 40 + '.npy'))
    fifo_state, link_spec, bad_state = add.run(x=3, y=4), add.run(x=5, y=6), echo.run(x=np.arange(1000))
    os.unlink(os.path.join(fifo_state.directory, 'state.json'))
    os.mkfifo(os.path.join(fifo_state.directory, 'state.json'))
    os.unlink(os.path.join(link_spec.directory, 'spec.json'))
    os.symlink('/dev/zero', os.path.join(link_spec.directory, 'spec.json'))
    with open(os.path.join(bad_state.directory, 'state.json'), 'w') as f:
        f.write('{"status": "fini')
    os.makedirs(os.path.join(root.path, 'jobs', 'cd'), exist_ok=True)
    with open(os.path.join(root.path, 'jobs', 'cd', 'cd0123456789abcd'), 'w') as f:
        f.write('a job directory that is a file')
    # a job directory that is a symlink to a copy of a job's directory elsewhere: not read
    os.makedirs(os.path.join(root.path, 'jobs', 'ce'), exist_ok=True)
    subprocess.run(['cp', '-r', jobs['add_ints'].directory, str(tmp_path / 'copied')], check=True)
    os.symlink(str(tmp_path / 'copied'), os.path.join(root.path, 'jobs', 'ce', 'ce0123456789abcd'))

    proc = run_python(DU_JSON, root.path, timeout=60)  # a hang fails here, it does not block the run
    assert proc.returncode == 0, proc.stderr
    usage = json.loads(proc.stdout)
    assert (usage['total']['bytes'], usage['total']['inodes'], usage['total']['disk']) == \
        (find_bytes(root.path), find_inodes(root.path), du_bytes(root.path))
    assert usage['areas']['other']['inodes'] == 5  # the root, root.json, the FIFO and the two symlinks
    statuses = {k: g['jobs'] for k, g in usage['by_status'].items()}
    assert statuses == {'queued': 1, 'finished': 4, 'error': 1, 'damaged': 4}
    functions = {k: g['jobs'] for k, g in usage['by_function'].items()}
    assert functions == {'echo': 3, 'add': 3, 'fail': 1, '?': 3}
    assert usage['by_function']['?']['inodes'] == 5  # the plain file, the symlink; link_spec's directory and 2 files
    assert usage['unreadable'] == []


def test_an_unreadable_directory_is_noted(root, jobs, monkeypatch, capsys):
    logs = os.path.join(root.path, 'logs')
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if path == logs:
            raise PermissionError(13, 'Permission denied', path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, 'open', refusing_open)  # (root may read anything: refuse it by hand)
    usage = disk_usage(root)
    assert usage.unreadable == [logs]
    assert usage.areas['logs'].inodes == 1  # the directory itself, from its parent's listing
    assert main(['--root', root.path, 'du']) == 1
    assert 'cannot list {}'.format(logs) in capsys.readouterr().err


def test_cli_tables_and_json(root, jobs, capsys):
    assert main(['--root', root.path, 'du']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['AREA', 'BYTES', 'DISK', 'INODES']
    assert [line[:10].strip() for line in lines[1:]] == list(AREAS) + ['total']
    assert re.match(r'total\s+\d+\.\d kB\s+\d+\.\d kB\s+{}$'.format(find_inodes(root.path)), lines[-1]), lines[-1]

    assert main(['--root', root.path, 'du', '--by', 'function']) == 0
    out = capsys.readouterr().out
    for name, count in (('echo', 2), ('add', 2), ('fail', 1), ('all jobs', 5)):
        assert re.search(r'^{}\s+{}\s+\d'.format(name, count), out, re.M), out
    assert 'counts in each of them' in out

    for by in ('status', 'age'):
        assert main(['--root', root.path, 'du', '--by', by]) == 0
        assert re.search(r'^all jobs\s+5\s', capsys.readouterr().out, re.M)

    assert main(['--root', root.path, 'du', '--json']) == 0
    data = json.loads(capsys.readouterr().out)
    assert data['total'] == {'bytes': find_bytes(root.path), 'disk': du_bytes(root.path),
                             'inodes': find_inodes(root.path)}
    assert data['by_function']['echo']['jobs'] == 2 and data['by_status']['finished']['jobs'] == 3
    assert set(data) >= {'areas', 'by_function', 'by_status', 'by_age', 'all_jobs', 'note'}


def test_human_units():
    assert [human(n) for n in (0, 999, 1234, 999949, 999950, 1200000, 3.4e12)] == \
        ['0 B', '999 B', '1.2 kB', '999.9 kB', '1.0 MB', '1.2 MB', '3.4 TB']

"""Submitting many small jobs: ``f.map(items)`` vs a loop of ``f.run()``, side by side.

    python bench/submit.py [--jobs N] [--repeat R]

Both submit the same N no-op jobs (``noop(i=k)``), each into a fresh root on the
same disk, in one process, alternating, R times each; it prints jobs submitted
per second (min / median / max). The jobs go to a queue that no worker serves,
so what is timed is submission alone: each job's spec.json and state.json
(temp directory + rename), its ticket in the queue, and its ``Job``. Two more
lines measure the same with a job cache (``hi.JobCache(path)``, every key new:
a cache lookup and an in-flight marker per job), and the filesystem floor: the
same files made by bare system calls (per job a directory, two files of a spec's
and a state's size, a rename, an empty ticket), with no Python job code at all.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hither_fs as hi  # noqa: E402
import hither_fs.submit  # noqa: E402
from noop import noop  # noqa: E402
from spread import line  # noqa: E402


class Parked(hi.JobHandler):
    """Jobs wait in a queue nobody serves: only their submission is measured."""

    def queue_for(self, root):
        return 'bench-submit'

    def __repr__(self):
        return 'Parked()'


def one(how, n, workdir, cached):
    root = tempfile.mkdtemp(dir=workdir)
    config = dict(root=os.path.join(root, 'root'), job_handler=Parked())
    if cached:
        config['job_cache'] = hi.JobCache(os.path.join(root, 'cache'))
    with hi.Config(**config):
        noop.run(i=-1)  # the root made, the function's source in its store
        t0 = time.perf_counter()
        if how == 'map':
            jobs = noop.map([dict(i=k) for k in range(n)])
        else:
            jobs = [noop.run(i=k) for k in range(n)]
        seconds = time.perf_counter() - t0
    assert len({job.id for job in jobs}) == n
    hither_fs.submit._jobs.clear()
    shutil.rmtree(root)
    return n / seconds


def floor(n, workdir):
    root = tempfile.mkdtemp(dir=workdir)
    jobs, queue = os.path.join(root, 'jobs'), os.path.join(root, 'queue')
    os.mkdir(jobs)
    os.mkdir(queue)
    spec, state = b'x' * 900, b'x' * 200
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for k in range(n):
        job_id = '{:016x}'.format(k * 2654435761 % (1 << 64))
        shard = os.path.join(jobs, job_id[:2])
        tmp = os.path.join(shard, '.' + job_id + '.tmp')
        try:
            os.mkdir(tmp, 0o700)
        except FileNotFoundError:
            os.mkdir(shard, 0o700)
            os.mkdir(tmp, 0o700)
        for name, data in (('spec.json', spec), ('state.json', state)):
            fd = os.open(os.path.join(tmp, name), flags, 0o600)
            os.write(fd, data)
            os.close(fd)
        os.rename(tmp, os.path.join(shard, job_id))
        os.close(os.open(os.path.join(queue, '{:020d}-{}.0.1'.format(time.time_ns(), job_id)), flags, 0o600))
    seconds = time.perf_counter() - t0
    shutil.rmtree(root)
    return n / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--jobs', type=int, default=2000)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--dir', default=None, help='where the roots go (default: a temporary directory)')
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(dir=args.dir)
    try:
        one('map', 50, workdir, False)  # warm: imports, first directories
        one('run', 50, workdir, False)
        rates = {}
        for cached in (False, True):
            for _ in range(args.repeat):
                for how in ('run', 'map'):
                    rates.setdefault((how, cached), []).append(one(how, args.jobs, workdir, cached))
                if not cached:
                    rates.setdefault('floor', []).append(floor(args.jobs, workdir))
        print('{} no-op jobs submitted, {} times each; jobs/s'.format(args.jobs, args.repeat))
        print('{:<34} {:>8} {:>8} {:>8}'.format('', 'min', 'median', 'max'))
        for cached in (False, True):
            tag = ' (JobCache(path))' if cached else ''
            print(line('loop of f.run()' + tag, rates['run', cached], 34))
            print(line('f.map()' + tag, rates['map', cached], 34))
            print('  f.map() / loop of f.run(), medians: {:.1f}x'.format(
                statistics.median(rates['map', cached]) / statistics.median(rates['run', cached])))
            if not cached:
                print(line('filesystem floor (same files)', rates['floor'], 34))
                print('  f.map() / floor, medians: {:.2f}'.format(
                    statistics.median(rates['map', False]) / statistics.median(rates['floor'])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()

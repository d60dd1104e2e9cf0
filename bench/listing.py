"""``hither-fs ls`` on a root of many ended jobs: from the shards' summaries, against reading
every job's records, and against the file system's own floor.

    python bench/listing.py [--jobs N] [--dir D] [--repeat R] [--keep]

How the root is built (no Python job code runs, no worker): two processes
(one per core), each a run of its own, submit their half of the N jobs with
``f.map`` (labelled ``nightly`` for one chunk in ten) into a queue that no
worker serves, then claim and commit them in the same process with the real
protocol (``protocol.claim`` + ``protocol.commit``, the calls a worker
makes), each with an outcome made up on the spot: finished (90 %), error
(7 %), cancelled (3 %), with a start, an end, a host and a worker. 0.1 % of
the jobs stay queued and 0.02 % are claimed and stay running; 20 ended jobs
are relabelled afterwards with ``job.set_label``. With ``--keep`` and an
existing ``--dir D/root`` of the right size, the root is reused.

What is timed, each as a subprocess whose output goes to a pipe (the real
command a user runs: ``python -m hither_fs --root ROOT ls``), ``--repeat``
times each (min / median / max):

- ``ls``, first run (no summaries yet: every job read, the summaries written);
- ``ls`` again (warm: the summaries and the live jobs);
- ``ls --status running`` (the live work's indexes only);
- ``ls --by run`` (warm);
- ``ls`` with ``HITHER_FS_SUMMARY=0`` (every job's records read, as before the summaries);
- ``find ROOT/jobs | wc -l`` (the file system's floor: every job's directory and files listed);
- ``python -c pass`` and ``python -c "import hither_fs.cli"`` (start-up).

The "first run" is timed once per repeat on a root whose ``summary/`` was removed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hither_fs as hi  # noqa: E402
from spread import line  # noqa: E402

CHUNK = 5000


@hi.function('bench_listing_job', '0.1.0')
def bench_listing_job(i):
    return i


class Parked(hi.JobHandler):
    """Jobs wait in a queue that no worker serves (the builder claims them itself)."""

    def __init__(self, queue):
        self.queue = queue

    def queue_for(self, root):
        return self.queue

    def __repr__(self):
        return 'Parked({!r})'.format(self.queue)


def build_half(root_path, part, n, seed):
    """One run: submit ``n`` jobs with f.map, then claim and commit nearly all of them."""
    import random

    from hither_fs import protocol
    from hither_fs.protocol import Outcome
    from hither_fs.queue import iter_tickets
    from hither_fs.root import Root

    rng = random.Random(seed)
    queue = 'bench-listing-{}'.format(part)
    with hi.Config(root=root_path, job_handler=Parked(queue)):
        for k in range(0, n, CHUNK):
            with hi.Config(label='nightly' if (k // CHUNK) % 10 == 3 else None):
                bench_listing_job.map([dict(i=part * n + j) for j in range(k, min(n, k + CHUNK))])
    root = Root.get(root_path)
    worker = 'w-bench{}-{}-{}'.format(part, os.getpid(), 'a1b2c3')
    live_queued, live_running = max(1, n // 1000), max(1, n // 5000)
    tickets = [path for path, _ in iter_tickets(root.layout, queue)]
    t = time.time() - n * 0.01
    for i, path in enumerate(tickets[:len(tickets) - live_queued]):
        claim = protocol.claim(root, path, worker)
        if claim is None:
            continue
        claim.spec = protocol.read_spec(root, claim.job_id)
        if i < live_running:
            continue  # claimed, never committed: running
        start = t + i * 0.01
        took = rng.uniform(0.05, 3.0)
        runtime = {'start': iso(start), 'end': iso(start + took), 'host': 'bench{}'.format(part), 'worker': worker,
                   'pid': 1000 + i % 50}
        roll = rng.random()
        if roll < 0.90:
            outcome = Outcome(result={'value': i}, runtime=runtime)
        elif roll < 0.97:
            outcome = Outcome(error=protocol.error_record('ValueError', 'bad input {}'.format(i), 'running the job',
                                                          module='builtins'), runtime=runtime)
        else:
            outcome = Outcome(error=protocol.cancelled_record(claim.job_id, 'by the benchmark'), runtime=runtime)
        protocol.commit(root, claim, outcome)


def iso(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + '.{:06d}Z'.format(int(seconds % 1 * 1e6))


def build(root_path, n):
    """The root of ``n`` jobs (see the module docstring), built by two processes at once."""
    import multiprocessing
    from hither_fs import listing
    from hither_fs.root import Root

    Root(root_path)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=build_half, args=(root_path, part, n // 2 + (n % 2 if part else 0), part))
             for part in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit('building the root failed')
    root = Root.get(root_path)
    ended = [j for j in listing.job_ids(root) if protocol_final(root, j)][:20]
    for job_id in ended:
        hi.get_job(job_id, root_path).set_label('relabelled')
    return time.perf_counter() - t0


def protocol_final(root, job_id):
    from hither_fs import protocol
    return protocol.read_state(root, job_id).get('status') in protocol.FINAL_VALUES


def timed(argv, env=None, shell=False):
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, shell=shell)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit('{} failed: {}'.format(argv, proc.stderr.decode()[-2000:]))
    return seconds, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--jobs', type=int, default=100000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--dir', default=None, help='where the root goes (default: a temporary directory; '
                                                    '/dev/shm for tmpfs)')
    parser.add_argument('--keep', action='store_true', help='keep the root (and reuse D/root if it is there)')
    args = parser.parse_args()
    if args.keep and args.dir:
        workdir = args.dir
        os.makedirs(workdir, exist_ok=True)
    else:
        workdir = tempfile.mkdtemp(dir=args.dir, prefix='bench-listing-')
    root_path = os.path.join(workdir, 'root')
    try:
        fs = (subprocess.run(['findmnt', '-no', 'FSTYPE', '-T', workdir], capture_output=True, text=True).stdout.split()
              or [subprocess.run(['stat', '-f', '-c', '%T', workdir], capture_output=True, text=True).stdout.strip()])[0]
        if not os.path.exists(os.path.join(root_path, 'root.json')):
            seconds = build(root_path, args.jobs)
            print('built {} jobs in {} ({}) in {:.0f} s'.format(args.jobs, root_path, fs, seconds))
        else:
            print('reusing {} ({})'.format(root_path, fs))
        py = sys.executable
        # byte-compiled once, as an installed package is (outside the checkout), whatever PYTHONDONTWRITEBYTECODE says
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONDONTWRITEBYTECODE'}
        env.update(PYTHONPYCACHEPREFIX=os.path.join(workdir, 'pycache'), PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
            + [p for p in [os.environ.get('PYTHONPATH')] if p]))
        ls = [py, '-m', 'hither_fs', '--root', root_path, 'ls']
        times = {}

        def add(name, seconds):
            times.setdefault(name, []).append(seconds)

        timed([py, '-c', 'import hither_fs.cli'], env)  # (compiled here)
        _, out = timed(ls, dict(env, HITHER_FS_SUMMARY='0'))
        print('ls says: ' + out.decode().strip().splitlines()[-1])
        for _ in range(args.repeat):
            shutil.rmtree(os.path.join(root_path, 'summary'), ignore_errors=True)
            add('hither-fs ls, first run (no summaries yet)', timed(ls, env)[0])
            for _ in range(3):
                add('hither-fs ls, warm (the summaries)', timed(ls, env)[0])
            add('hither-fs ls --status running', timed(ls + ['--status', 'running'], env)[0])
            add('hither-fs ls --by run, warm', timed(ls + ['--by', 'run'], env)[0])
            add('hither-fs ls --label nightly, warm', timed(ls + ['--label', 'nightly'], env)[0])
            add('hither-fs ls, every record read (HITHER_FS_SUMMARY=0)',
                timed(ls, dict(env, HITHER_FS_SUMMARY='0'))[0])
            add('find ROOT/jobs | wc -l (file system floor)',
                timed('find {} | wc -l'.format(os.path.join(root_path, 'jobs')), env, shell=True)[0])
            add('python -c pass (start-up floor)', timed([py, '-c', 'pass'], env)[0])
            add('python -c "import hither_fs.cli"', timed([py, '-c', 'import hither_fs.cli'], env)[0])
        _, warm = timed(ls + ['--limit', '0', '--json'], env)
        _, cold = timed(ls + ['--limit', '0', '--json'], dict(env, HITHER_FS_SUMMARY='0'))
        print('ls --limit 0 --json the same with and without summaries: {}'.format(warm == cold))
        print('{} jobs on {}; seconds, {} runs each (warm: {})'.format(args.jobs, fs, args.repeat, 3 * args.repeat))
        print('{:<52} {:>7} {:>7} {:>7}'.format('', 'min', 'median', 'max'))
        for name, ts in times.items():
            print(line(name, ts, 52, '{:>7.3f}'))
        warm_ls = statistics.median(times['hither-fs ls, warm (the summaries)'])
        print('  every record read / warm, medians: {:.1f}x'.format(
            statistics.median(times['hither-fs ls, every record read (HITHER_FS_SUMMARY=0)']) / warm_ls))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()

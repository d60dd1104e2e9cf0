"""No-op jobs per second: hither_fs local workers vs ProcessPoolExecutor vs the filesystem floor.

    python bench/throughput.py [--jobs N] [--repeat R]

All three run side by side in one process on the same machine and disk, R
times each in turn (default 3), printed as min / median / max jobs/s:

* ``hither_fs``: ``ParallelJobHandler(num_workers=2)``, every job written to
  a fresh root, claimed, run in its worker's warm runner, committed, waited for.
* ``ProcessPoolExecutor(2)``: the standard library, no files at all.
* ``filesystem floor``: in one process, the fewest file operations a job on a
  filesystem bus needs - write the spec and a queue ticket, claim by rename,
  write the result and the final state (each write by temp file + rename, as
  hither_fs does unless ``HITHER_FS_FSYNC=1``) - with no Python job code at all.

Against each reference it prints the ratio of the medians, and each round's
ratio: the three run one after another in a round, so a round's ratio compares
them on the disk as it was then (this machine's disk swings between a fast and
a slow state within minutes). It also reports how long ``job.wait()`` takes to
notice a finished job, and what waiting costs the waiting process.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

import hither_fs as hi  # noqa: E402
from hither_fs.runtime.files import write_json  # noqa: E402
from noop import noop, noop_plain  # noqa: E402
from spread import spread  # noqa: E402


def cpu_seconds(process):
    times = process.cpu_times()
    return times.user + times.system


def bench_hither(n, workdir, cpu=None):
    """Seconds for n no-op jobs; ``cpu`` (a dict) gets the CPU seconds per job spent by this
    process (submitting and waiting), by the two workers and by their warm runners."""
    handler = hi.ParallelJobHandler(num_workers=2)
    with hi.Config(job_handler=handler, root=os.path.join(workdir, 'root')):
        noop.run(i=-1).wait()  # workers started and warm
        workers = [psutil.Process(p.pid) for ps in handler._workers.values() for p in ps]
        runners = [c for w in workers for c in w.children()]
        before = [time.process_time(), sum(map(cpu_seconds, workers)), sum(map(cpu_seconds, runners))]
        t0 = time.perf_counter()
        jobs = [noop.run(i=i) for i in range(n)]
        results = [j.wait() for j in jobs]
        elapsed = time.perf_counter() - t0
        after = [time.process_time(), sum(map(cpu_seconds, workers)), sum(map(cpu_seconds, runners))]
    assert results == list(range(n))
    if cpu is not None:
        for key, b, a in zip(('submitter', 'workers', 'runners'), before, after):
            cpu.setdefault(key, []).append((a - b) / n)
    handler.halt()
    return elapsed


def bench_pool(n):
    with ProcessPoolExecutor(2) as pool:
        pool.submit(noop_plain, -1).result()
        t0 = time.perf_counter()
        futures = [pool.submit(noop_plain, i) for i in range(n)]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
    assert results == list(range(n))
    return elapsed


def bench_floor(n, workdir):
    base = os.path.join(workdir, 'floor')
    queue, running, jobs = (os.path.join(base, d) for d in ('queue', 'running', 'jobs'))
    for d in (queue, running, jobs):
        os.makedirs(d)
    t0 = time.perf_counter()
    for i in range(n):
        jdir = os.path.join(jobs, str(i))
        os.mkdir(jdir)
        write_json(os.path.join(jdir, 'spec.json'), {'function': 'noop', 'args': {'i': i}})
        write_json(os.path.join(queue, str(i)), {})
        os.rename(os.path.join(queue, str(i)), os.path.join(running, str(i)))  # the claim
        write_json(os.path.join(jdir, 'result.json'), {'value': i})
        write_json(os.path.join(jdir, 'state.json'), {'status': 'finished'})
        os.unlink(os.path.join(running, str(i)))
    return time.perf_counter() - t0


def waiting(workdir, samples=10, long_wait=10.0):
    """Seconds between a job's state becoming final and wait() returning (median), and the
    share of one core the waiting process used while it waited ``long_wait`` seconds."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
    from jobfuncs import sleepy
    handler = hi.ParallelJobHandler(num_workers=1)
    lags = []
    with hi.Config(job_handler=handler, root=os.path.join(workdir, 'root-latency')):
        sleepy.run(seconds=0).wait()
        for _ in range(samples):
            job = sleepy.run(seconds=0.3)
            job.wait()
            returned = time.time()
            finished = os.stat(os.path.join(job.directory, 'state.json')).st_mtime
            lags.append(returned - finished)
        job = sleepy.run(seconds=long_wait)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        job.wait()
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    handler.halt()
    return statistics.median(lags), cpu_share


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--jobs', type=int, default=1000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--dir', help='where the roots go (default: the temporary directory; /dev/shm for tmpfs)')
    parser.add_argument('--json', help='also write the numbers to this file')
    args = parser.parse_args()
    n = args.jobs
    rates = {'hither': [], 'pool': [], 'floor': []}
    cpu = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        for r in range(args.repeat):
            rates['hither'].append(n / bench_hither(n, os.path.join(workdir, str(r)), cpu))
            rates['pool'].append(n / bench_pool(n))
            rates['floor'].append(n / bench_floor(n, os.path.join(workdir, str(r))))
        lag, cpu_share = waiting(workdir)
    rows = [('hither_fs ParallelJobHandler(2)', 'hither'), ('ProcessPoolExecutor(2)', 'pool'),
            ('filesystem floor (1 process)', 'floor')]
    print('{} no-op jobs, {} times each; jobs/s'.format(n, args.repeat))
    print('{:34} {:>8} {:>8} {:>8}'.format('', 'min', 'median', 'max'))
    for name, key in rows:
        print('{:34} {:8.0f} {:8.0f} {:8.0f}'.format(name, *spread(rates[key])))
    median = {key: statistics.median(v) for key, v in rates.items()}
    print('  hither_fs / filesystem floor, medians:    {:.2f}   (target: at least 0.5)'.format(
        median['hither'] / median['floor']))
    print('  hither_fs / ProcessPoolExecutor, medians: {:.3f}  (target: at least 0.1)'.format(
        median['hither'] / median['pool']))
    for peer, name in (('floor', 'filesystem floor'), ('pool', 'ProcessPoolExecutor')):
        # the three ran one after another in each round: a round's ratio compares the disk as it was then
        ratios = [h / other for h, other in zip(rates['hither'], rates[peer])]
        print('  hither_fs / {}, round by round: {}  (median {:.2f})'.format(
            name, ' '.join('{:.2f}'.format(r) for r in ratios), statistics.median(ratios)))
    print('CPU per hither_fs job (median, ms): submitting and waiting {:.2f}, workers {:.2f}, their runners {:.2f}'
          .format(*(statistics.median(cpu[k]) * 1000 for k in ('submitter', 'workers', 'runners'))))
    print('wait() notices a finished job after {:.1f} ms (median of 10)'.format(lag * 1000))
    print('waiting 10 s for a job used {:.2f}% of one core'.format(cpu_share * 100))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'jobs': n, 'jobs_per_second': rates, 'notice_latency_s': lag, 'wait_cpu_share': cpu_share},
                      f, indent=1)


if __name__ == '__main__':
    main()

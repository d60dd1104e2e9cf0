"""Latency of one job, and of a chain of dependent jobs: hither_fs vs joblib and dask, side by side.

    python bench/latency.py [--rounds R] [--samples N] [--idle-samples M] [--long-idle] [--skip-waiting]
                             [--only roundtrip,idle,chain,fanout,waiting]

All contenders run in this one process, warm, on the same machine, one after
another within each round; every measure is repeated ``--rounds`` times (3 by
default) and printed as min / median / max *of the per-round p50* (the median
of the round's samples), with the ratio of the medians against each peer.

* ``hither_fs``: ``noop.run(x=i).wait()`` on ``hi.ParallelJobHandler(2)`` (its
  two workers started and warm), a fresh root in a temporary directory.
* ``joblib``: ``Parallel(n_jobs=2)`` (loky, kept open: ``with Parallel(...) as p``),
  one ``p([delayed(f)(i)])`` per call.
* ``dask processes``: ``dask.delayed(f)(i).compute(scheduler='processes', pool=pool)``
  with one ``ProcessPoolExecutor(2)`` kept for all calls (without ``pool`` dask
  starts a new pool per call: 0.5 s).
* ``dask.distributed``: ``client.submit(f, i, pure=False).result()`` on a warm
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.

Measures:

* ``round trip``: submit one no-op job and wait for its result, back to back.
* ``after idling 0.25 s`` (and 2 s with ``--long-idle``, a third as many samples):
  the same, with the caller sleeping before each submit (not timed): what a job
  costs when the workers had nothing to do for a while.
* ``chain of 100``: ``j = noop.run(x=0)`` then 99 times ``j = step.run(x=j)``
  (a Job as an argument: a pipeline), then ``j.wait()``; against dask.distributed's
  ``client.submit(step, prev)`` chain. Milliseconds per link (total / 100).
* ``fan-out``: one job naps 1 s, then the 2 jobs that take it as an argument nap
  0.05 s each, on the 2 workers; the time beyond the naps (against
  dask.distributed's ``client.submit(f, up)``). The second of the 2 jobs starts
  as soon as a worker wakes to it.
* ``waiting``: from a job's function returning (a 0.3 s nap that returns
  ``time.time()``) to ``job.wait()`` returning in the submitter, median of 10;
  and the share of one core the waiting process uses while it waits 10 s. On a
  root of this machine once woken by inotify, and once polling only (as on a
  shared filesystem, where inotify sees no other node's writes).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hither_fs as hi  # noqa: E402
from hither_fs import dirwatch  # noqa: E402
from latencyfuncs import nap, nap_after, nap_after_plain, nap_plain, noop, noop_plain, step, step_plain  # noqa: E402
from spread import spread as spread_of  # noqa: E402

CHAIN = 100
FAN, FAN_UP, FAN_DOWN = 2, 1.0, 0.05


def p50(samples):
    return statistics.median(samples)


# -- the contenders: each a callable that runs one no-op job and returns its result ------------

class Hither:
    name = 'hither_fs ParallelJobHandler(2)'

    def __init__(self, workdir):
        self.handler = hi.ParallelJobHandler(num_workers=2)
        self.config = hi.Config(job_handler=self.handler, root=os.path.join(workdir, 'root'))
        self.config.__enter__()

    def one(self, i):
        return noop.run(x=i).wait()

    def chain(self):
        j = noop.run(x=0)
        for _ in range(CHAIN - 1):
            j = step.run(x=j)
        return j.wait()

    def fan_out(self):
        up = nap.run(seconds=FAN_UP)
        downs = [nap_after.run(up=up, seconds=FAN_DOWN) for _ in range(FAN)]
        return [d.wait() for d in downs]

    def close(self):
        self.config.__exit__(None, None, None)
        self.handler.halt()


class Joblib:
    name = 'joblib Parallel(n_jobs=2)'

    def __init__(self, workdir):
        from joblib import Parallel, delayed
        self.delayed = delayed
        self.parallel = Parallel(n_jobs=2)
        self.parallel.__enter__()

    def one(self, i):
        return self.parallel([self.delayed(noop_plain)(i)])[0]

    def close(self):
        self.parallel.__exit__(None, None, None)


class DaskProcesses:
    name = "dask compute(scheduler='processes')"

    def __init__(self, workdir):
        import dask
        self.dask = dask
        # dask makes a new pool per compute() unless it is given one: kept warm, as the others
        self.pool = ProcessPoolExecutor(2)

    def one(self, i):
        return self.dask.delayed(noop_plain)(i).compute(scheduler='processes', pool=self.pool)

    def close(self):
        self.pool.shutdown()


class DaskDistributed:
    name = 'dask.distributed LocalCluster(2)'

    def __init__(self, workdir):
        import logging

        from dask.distributed import Client, LocalCluster
        logging.getLogger('distributed').setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    local_directory=workdir)
        self.client = Client(self.cluster)

    def one(self, i):
        return self.client.submit(noop_plain, i, pure=False).result()

    def chain(self):
        fut = self.client.submit(noop_plain, 0, pure=False)
        for _ in range(CHAIN - 1):
            fut = self.client.submit(step_plain, fut, pure=False)
        return fut.result()

    def fan_out(self):
        up = self.client.submit(nap_plain, FAN_UP, pure=False)
        downs = [self.client.submit(nap_after_plain, up, FAN_DOWN, pure=False) for _ in range(FAN)]
        return [d.result() for d in downs]

    def close(self):
        self.client.close()
        self.cluster.close()


# -- the measures ----------------------------------------------------------------------------

def round_trips(contender, samples, idle):
    times = []
    for i in range(samples):
        if idle:
            time.sleep(idle)
        t0 = time.perf_counter()
        assert contender.one(i) == i
        times.append(time.perf_counter() - t0)
    return p50(times)


def chain_per_link(contender):
    t0 = time.perf_counter()
    assert contender.chain() == CHAIN - 1
    return (time.perf_counter() - t0) / CHAIN


def fan_out_overhead(contender):
    """Seconds a fan-out takes beyond its naps: one job naps ``FAN_UP``, then ``FAN`` jobs
    that wait for it nap ``FAN_DOWN`` each, on as many workers."""
    t0 = time.perf_counter()
    ends = contender.fan_out()
    assert len(set(ends)) == 1
    return time.perf_counter() - t0 - FAN_UP - FAN_DOWN


def waiting(samples=10, long_wait=10.0, polling=False):
    """(median seconds from a job's function returning to ``wait()`` returning, share of one
    core this process used while waiting ``long_wait`` seconds for one job). ``polling``: as
    on a shared filesystem, without inotify (looks at state.json on a schedule only)."""
    is_local = dirwatch.is_local
    if polling:
        dirwatch.is_local = lambda path: False
    try:
        lags = []
        for _ in range(samples):
            ended = nap.run(seconds=0.3).wait()
            lags.append(time.time() - ended)
        job = nap.run(seconds=long_wait)
        time.sleep(0.05)  # it started
        cpu0, wall0 = time.process_time(), time.perf_counter()
        job.wait()
        return p50(lags), (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    finally:
        dirwatch.is_local = is_local


def spread(values, scale=1000.0, fmt='{:8.2f}'):
    return ' '.join(fmt.format(v * scale) for v in spread_of(values))


def table(title, rows, unit='ms'):
    """rows: [(name, [per-round values])]; hither_fs first; prints min/median/max and ratios."""
    print('\n{} ({}; min / median / max over {} rounds of the per-round p50)'.format(
        title, unit, len(rows[0][1])))
    ours = p50(rows[0][1])
    for name, values in rows:
        ratio = '' if name == rows[0][0] else 'hither_fs / this = {:.2f}x'.format(ours / p50(values))
        print('  {:38} {}   {}'.format(name, spread(values), ratio))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--samples', type=int, default=50, help='round trips per round (back to back)')
    parser.add_argument('--idle-samples', type=int, default=12, help='round trips per round after idling')
    parser.add_argument('--long-idle', action='store_true', help='also after idling 2 s (a third as many samples)')
    parser.add_argument('--skip-waiting', action='store_true', help='skip the 10 s waiting measure')
    parser.add_argument('--only', help='comma-separated: roundtrip,idle,chain,fanout,waiting')
    args = parser.parse_args()
    only = set(args.only.split(',')) if args.only else {'roundtrip', 'idle', 'chain', 'fanout', 'waiting'}
    idles = [0.25] + ([2.0] if args.long_idle else [])
    idle_samples = {0.25: args.idle_samples, 2.0: max(3, args.idle_samples // 3)}
    with tempfile.TemporaryDirectory() as workdir:
        contenders = [Hither(workdir), Joblib(workdir), DaskProcesses(workdir), DaskDistributed(workdir)]
        try:
            for c in contenders:  # warm: workers started, functions imported
                for i in range(5):
                    assert c.one(i) == i
            names = [c.name for c in contenders]
            trips = {c.name: [] for c in contenders}
            idled = {(c.name, idle): [] for c in contenders for idle in idles}
            chains = {c.name: [] for c in contenders if hasattr(c, 'chain')}
            fans = {c.name: [] for c in contenders if hasattr(c, 'fan_out')}
            if 'chain' in only:
                for c in contenders:
                    if hasattr(c, 'chain'):
                        c.chain()  # warm
            for _ in range(args.rounds):
                for c in contenders:
                    if 'roundtrip' in only:
                        trips[c.name].append(round_trips(c, args.samples, 0))
                    if 'idle' in only:
                        for idle in idles:
                            idled[c.name, idle].append(round_trips(c, idle_samples[idle], idle))
                    if 'chain' in only and hasattr(c, 'chain'):
                        chains[c.name].append(chain_per_link(c))
                    if 'fanout' in only and hasattr(c, 'fan_out'):
                        fans[c.name].append(fan_out_overhead(c))
            for c in contenders[1:]:  # their threads (dask's client) must not count as the waiter's CPU
                c.close()
            contenders = contenders[:1]
            if 'waiting' in only and not args.skip_waiting:
                waits = [('inotify' if dirwatch.is_local(workdir) else 'polling', waiting())]
                if waits[0][0] == 'inotify':
                    waits.append(('polling only', waiting(polling=True)))
        finally:
            for c in contenders:
                c.close()
    if 'roundtrip' in only:
        table('warm round trip of one no-op job, {} back to back per round'.format(args.samples),
              list(trips.items()))
    if 'idle' in only:
        for idle in idles:
            table('round trip after idling {} s before each submit, {} per round'.format(idle, idle_samples[idle]),
                  [(name, idled[name, idle]) for name in names])
    if 'chain' in only:
        table('chain of {} dependent jobs, per link'.format(CHAIN), list(chains.items()))
    if 'fanout' in only:
        table('fan-out: a {:g} s job, then {} jobs of {:g} s that wait for it, beyond the naps'.format(
            FAN_UP, FAN, FAN_DOWN), list(fans.items()))
    if 'waiting' in only and not args.skip_waiting:
        print('\nwaiting for a job (hither_fs job.wait()), with {}:'.format(' and with '.join(w for w, _ in waits)))
        for how, (lag, cpu_share) in waits:
            print('  {:14} returns {:5.2f} ms after the job\'s function returned (median of 10); '
                  'waiting 10 s used {:.2f}% of one core'.format(how, lag * 1000, cpu_share * 100))


if __name__ == '__main__':
    main()

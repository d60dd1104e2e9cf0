"""Cache hits: hither_fs's ``JobCache()`` and ``JobCache(path)`` against ``joblib.Memory``, side by side.

    python bench/cache.py [--hits N] [--repeat R] [--dir DIR]

N (default 2000) cache hits of one small function (``noop(i)``, returning ``i``),
all N already cached, timed as a user makes them:

* hither_fs, ``JobCache()`` (the entries in the root, the default):
  ``noop.run(i=k).wait()`` under ``hi.Config(root=..., job_cache=hi.JobCache())``,
  in the root whose jobs computed them;
* hither_fs, ``JobCache(path)`` (a lab's cache), from a fresh root: the same
  call under ``hi.Config(root=<new root>, job_cache=hi.JobCache(path))``, each
  repetition in a root of its own that has never seen the jobs (the cache was
  filled from another root);
* ``joblib.Memory(location)``: ``memory.cache(noop_plain)(k)``.

The three alternate, R (default 5, at least 3) times each, in one process; it
prints hits/s (min / median / max), the ratio of each hither_fs median to
joblib's, and how many files the hits left in the hither_fs roots (a hit writes
no job record). The roots, the cache and joblib's location are made in DIR (by
default the temporary directory) and removed afterwards. Needs ``pip install joblib``.
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
from noop import noop, noop_plain  # noqa: E402
from spread import line  # noqa: E402


def files_in(path):
    return sum(len(names) + len(dirs) for _, dirs, names in os.walk(path))


def hither_hits(n, root, cache):
    """Seconds for n hits of noop under hi.Config(root=root, job_cache=cache), and the files they added."""
    hi.Root(root)  # a fresh root is made before the clock starts
    before = files_in(root)
    with hi.Config(root=root, job_cache=cache):
        t0 = time.perf_counter()
        for k in range(n):
            noop.run(i=k).wait()
        seconds = time.perf_counter() - t0
    hither_fs.submit._jobs.clear()  # hi.wait()'s list: not this benchmark's business
    return seconds, files_in(root) - before


def warm_hither(n, root, cache):
    with hi.Config(root=root, job_cache=cache):
        jobs = noop.map([dict(i=k) for k in range(n)])
        hi.wait()
    assert [job.result() for job in jobs] == list(range(n))
    hither_fs.submit._jobs.clear()


def joblib_hits(n, memory):
    t0 = time.perf_counter()
    for k in range(n):
        assert memory.cache(noop_plain)(k) == k
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--hits', type=int, default=2000)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--dir', default=None, help='where the roots and caches go (default: a temporary directory)')
    args = parser.parse_args()
    if args.repeat < 3:
        parser.error('--repeat must be at least 3')
    try:
        import joblib
    except ImportError:
        sys.exit('bench/cache.py compares with joblib.Memory: pip install joblib')
    n = args.hits
    workdir = tempfile.mkdtemp(dir=args.dir)
    try:
        # warm: every key computed once; the lab cache filled from a root of its own
        user_root = os.path.join(workdir, 'user-root')
        user_cache = hi.JobCache()
        warm_hither(n, user_root, user_cache)
        lab_cache = hi.JobCache(os.path.join(workdir, 'lab-cache'))
        warm_hither(n, os.path.join(workdir, 'filling-root'), lab_cache)
        memory = joblib.Memory(os.path.join(workdir, 'joblib'), verbose=0)
        for k in range(n):
            memory.cache(noop_plain)(k)
        # the first hit of each kind in this process (imports, first reads) is not timed
        hither_hits(1, user_root, user_cache)
        hither_hits(1, os.path.join(workdir, 'fresh-root-warm'), lab_cache)
        joblib_hits(1, memory)

        rates = {'user': [], 'lab': [], 'joblib': []}
        written = {'user': 0, 'lab': 0}
        for r in range(args.repeat):
            order = ['user', 'lab', 'joblib']
            order = order[r % 3:] + order[:r % 3]  # each goes first in turn
            for kind in order:
                if kind == 'joblib':
                    seconds = joblib_hits(n, memory)
                else:
                    root = user_root if kind == 'user' else os.path.join(workdir, 'fresh-root-{}'.format(r))
                    seconds, files = hither_hits(n, root, user_cache if kind == 'user' else lab_cache)
                    written[kind] += files
                rates[kind].append(n / seconds)

        print('{} cache hits of noop(i), all cached, {} times each; hits/s'.format(n, args.repeat))
        print('{:<44} {:>8} {:>8} {:>8}'.format('', 'min', 'median', 'max'))
        print(line('hither_fs JobCache()      f.run(i=k).wait()', rates['user'], 44))
        print(line('hither_fs JobCache(path)  from a fresh root', rates['lab'], 44))
        print(line('joblib.Memory             memory.cache(f)(k)', rates['joblib'], 44))
        base = statistics.median(rates['joblib'])
        print('  JobCache() / joblib.Memory, medians:     {:.2f}x'.format(statistics.median(rates['user']) / base))
        print('  JobCache(path) / joblib.Memory, medians: {:.2f}x'.format(statistics.median(rates['lab']) / base))
        print('files the hits added to the roots: JobCache() {}, JobCache(path) {} (in {} hits each)'.format(
            written['user'], written['lab'], n * args.repeat))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()

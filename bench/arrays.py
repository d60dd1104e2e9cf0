"""Big arrays through jobs: hither_fs against ``np.save`` + ``np.load`` of the same bytes.

    python bench/arrays.py [--gib G] [--repeat N] [--dir D] [--no-settle] [--json FILE]

Side by side in one run, on the same disk (``--dir``, default the system's temp
directory), each measure repeated ``--repeat`` times (default 5, at least 3),
the two contenders taking turns (which goes first alternates):

* **in**: ``array_sum.run(x=a).wait()`` - a G GiB float64 array into a job that
  returns its sum (the array is hashed and written to the store by the
  submitter, read and checked by the job's process) - against
  ``np.save(path, a); float(np.load(path).sum())``. Each repetition changes
  one element, so every run stores new bytes (no deduplication helps).
* **out**: ``make_array.run(n, v).wait()`` - a job that makes a G GiB array
  (``np.full``) and returns it (hashed as the job writes it, checked as the
  submitter reads it) - against ``np.save(path, np.full(n, v)); np.load(path)``.
* **10 jobs, one array**: the same G GiB array passed to 10 jobs; the bytes the
  submitting process wrote (``wchar`` and ``write_bytes`` of /proc/self/io;
  the job processes only read it) and the bytes on disk under the root (du).

Every contender runs once, untimed, with the full-size array before the timed
rounds (workers started, functions imported, code paths warm). Before each
timed measure the disk and memory are *settled* (``--no-settle`` skips it):
``os.sync()``, so that the write-back of what the previous measure wrote does
not slow the next one, and 3 G GiB of fresh memory touched and freed, because
a virtual machine that hands freed memory back to its host (as the one these
numbers come from does) makes the first touch of new memory cost up to 3 s per
GiB instead of 0.15, whichever contender it falls on. Unsettled, single
measures of the same thing differ tenfold.

Ratios of the medians (and of the minimums) are given against ``np.save`` +
``np.load`` alone (io), and against the same plus the computing the job does
(the sum; the ``np.full``), timed apart in the same baseline run (io+work).

The last lines give hither_fs's floor: the sha1 passes it must make, timed here
on the same bytes (a blob's name is the sha1 of its bytes, computed by its
writer; every reader checks it, as it streams, before the array is handed
over), which ``np.save`` + ``np.load`` do not pay. Both directions make two:
``out`` the job's (naming the blob) and the submitter's (checking it); ``in``
the submitter's (naming it, before it knows whether the store has it) and the
job's (checking it). The ratio printed beside the floor is the best any
implementation keeping those checks could reach on this machine.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hither_fs as hi  # noqa: E402
from spread import spread  # noqa: E402


@hi.function('array_sum', '0.1.0')
def array_sum(x):
    return float(x.sum())


@hi.function('make_array', '0.1.0')
def make_array(n, value):
    return np.full(n, value)


def proc_io():
    with open('/proc/self/io') as f:
        return {k: int(v) for k, v in (line.split(':') for line in f)}


def du(path):
    """(bytes of disk the files under ``path`` take, their apparent size)."""
    blocks = size = 0
    for d, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(d, name))
            blocks += st.st_blocks * 512
            size += st.st_size
    return blocks, size


def remove_tree_files(path, suffix):
    for d, _, names in os.walk(path):
        for name in names:
            if name.endswith(suffix):
                os.unlink(os.path.join(d, name))


def settle(nbytes, enabled):
    """Write back what is dirty and warm 3 arrays' worth of memory (see the module docstring)."""
    if not enabled:
        return
    os.sync()
    fresh = np.empty(3 * nbytes, dtype=np.uint8)
    fresh[::4096] = 1
    del fresh


def sha1_seconds(a):
    """One sha1 pass over ``a``'s bytes, as the store makes it (the best of two)."""
    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        hashlib.sha1(memoryview(a.view(np.uint8))).hexdigest()
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
    return best


class Contenders:
    """The four timed measures; each appends its seconds to ``t`` when ``timed``."""

    def __init__(self, n, root, npy, t, settle_each):
        self.n, self.root, self.npy, self.t, self.settle = n, root, npy, t, settle_each

    def hither_in(self, a, expected, timed=True):
        self.settle()
        t0 = time.perf_counter()
        assert array_sum.run(x=a).wait() == expected
        took = time.perf_counter() - t0
        remove_tree_files(self.root, '.npy')
        if timed:
            self.t['in'].append(took)

    def numpy_in(self, a, expected, timed=True):
        self.settle()
        t0 = time.perf_counter()
        np.save(self.npy, a)
        b = np.load(self.npy)
        t1 = time.perf_counter()
        assert float(b.sum()) == expected
        t2 = time.perf_counter()
        del b
        os.unlink(self.npy)
        if timed:
            self.t['in_np_io'].append(t1 - t0)
            self.t['in_np'].append(t2 - t0)

    def hither_out(self, value, timed=True):
        self.settle()
        t0 = time.perf_counter()
        out = make_array.run(n=self.n, value=value).wait()
        took = time.perf_counter() - t0
        assert out.shape == (self.n,) and out[-1] == value
        del out
        remove_tree_files(self.root, '.npy')
        if timed:
            self.t['out'].append(took)

    def numpy_out(self, value, timed=True):
        self.settle()
        t0 = time.perf_counter()
        c = np.full(self.n, value)
        t1 = time.perf_counter()
        np.save(self.npy, c)
        del c
        out = np.load(self.npy)
        t2 = time.perf_counter()
        assert out[-1] == value
        del out
        os.unlink(self.npy)
        if timed:
            self.t['out_np'].append(t2 - t0)
            self.t['out_np_io'].append(t2 - t1)


def run(gib, repeat, workdir, settle_each=True):
    n = int(gib * (1 << 30)) // 8
    nbytes = n * 8
    root = os.path.join(workdir, 'root')
    npy = os.path.join(workdir, 'plain.npy')
    t = {k: [] for k in ('in', 'in_np', 'in_np_io', 'out', 'out_np', 'out_np_io')}
    floor = {}
    handler = hi.ParallelJobHandler(num_workers=2)
    try:
        with hi.Config(job_handler=handler, root=root):
            c = Contenders(n, root, npy, t, lambda: settle(nbytes, settle_each))
            a = np.random.default_rng(0).random(n)
            # warm: every contender once, untimed, at full size
            a[0] = -2.0
            expected = float(a.sum())
            c.hither_in(a, expected, timed=False)
            c.numpy_in(a, expected, timed=False)
            c.hither_out(-2.0, timed=False)
            c.numpy_out(-2.0, timed=False)
            for rep in range(repeat):
                a[0] = rep  # new bytes for each repetition
                expected = float(a.sum())
                value = 0.5 + rep
                if rep % 2 == 0:
                    c.hither_in(a, expected)
                    c.numpy_in(a, expected)
                    c.hither_out(value)
                    c.numpy_out(value)
                else:
                    c.numpy_in(a, expected)
                    c.hither_in(a, expected)
                    c.numpy_out(value)
                    c.hither_out(value)
            settle(nbytes, settle_each)
            floor['sha1'] = sha1_seconds(a)

        # the same array to 10 jobs, in a fresh root
        root10 = os.path.join(workdir, 'root10')
        with hi.Config(job_handler=handler, root=root10):
            array_sum.run(x=np.ones(10)).wait()
            a[0] = -1.0
            expected = float(a.sum())
            settle(nbytes, settle_each)
            before = proc_io()
            du0 = du(root10)
            jobs = [array_sum.run(x=a) for _ in range(10)]
            assert [j.wait() for j in jobs] == [expected] * 10
            after = proc_io()
            du1 = du(root10)
    finally:
        handler.halt()
    written = {k: after[k] - before[k] for k in ('wchar', 'write_bytes')}
    return nbytes, t, floor, written, (du1[0] - du0[0], du1[1] - du0[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--gib', type=float, default=1.0, help='array size in GiB (default 1)')
    parser.add_argument('--repeat', type=int, default=5, help='repetitions of each measure (default 5, at least 3)')
    parser.add_argument('--dir', help='where the root and the .npy files go (default: the temp directory)')
    parser.add_argument('--no-settle', action='store_true',
                        help='do not sync and warm memory before each measure')
    parser.add_argument('--json', help='also write the numbers to this file')
    args = parser.parse_args()
    repeat = max(3, args.repeat)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        nbytes, t, floor, written, grown = run(args.gib, repeat, workdir, settle_each=not args.no_settle)
    load_after = os.getloadavg()[0]
    gib = nbytes / (1 << 30)
    print('{:.3g} GiB float64 array, {} repetitions{}, {} CPUs, load average {:.1f} before and {:.1f} after '
          '(seconds: min / median / max)'.format(gib, repeat, '' if not args.no_settle else ', unsettled',
                                                 os.cpu_count(), load_before, load_after))
    rows = [
        ('in:  hither_fs array_sum.run(x=a).wait()', t['in']),
        ('in:  np.save + np.load', t['in_np_io']),
        ('in:  np.save + np.load + sum', t['in_np']),
        ('out: hither_fs make_array.run(n).wait()', t['out']),
        ('out: np.save + np.load', t['out_np_io']),
        ('out: np.full + np.save + np.load', t['out_np']),
    ]
    for name, xs in rows:
        print('{:44} {:7.3f} {:7.3f} {:7.3f}'.format(name, *spread(xs)))
    ratios = {}
    print('hither_fs / baseline (io = np.save + np.load; io+work = the same plus the job\'s own sum or '
          'np.full), target <= 1.5x:')
    for what in ('in', 'out'):
        ratios[what] = {}
        for how, pick in (('median', statistics.median), ('min', min)):
            mine = pick(t[what])
            io_only, same_work = pick(t[what + '_np_io']), pick(t[what + '_np'])
            ratios[what][how] = (mine / io_only, mine / same_work)
            print('  {:4} {:6}  vs io: {:.2f}x   vs io+work: {:.2f}x'.format(what, how, mine / io_only,
                                                                         mine / same_work))
    sha1 = floor['sha1']
    work = {'in': statistics.median(t['in_np']) - statistics.median(t['in_np_io']),
            'out': statistics.median(t['out_np']) - statistics.median(t['out_np_io'])}
    print('floor: one sha1 pass over the bytes takes {:.3f} s here; two of them, plus the job\'s own work:'.format(
        sha1))
    for what in ('in', 'out'):
        least = 2 * sha1 + work[what]
        floor[what] = least
        print('  {:4} {:.3f} s = {:.2f}x the median of np.save + np.load'.format(
            what, least, least / statistics.median(t[what + '_np_io'])))
    print('10 jobs of the same array: submitter wrote {:.3f} GiB (wchar), {:.3f} GiB (write_bytes); the root grew '
          'by {:.3f} GiB on disk ({:.3f} GiB apparent) (target <= 1.1x the array)'.format(
              written['wchar'] / 2 ** 30, written['write_bytes'] / 2 ** 30, grown[0] / 2 ** 30, grown[1] / 2 ** 30))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'bytes': nbytes, 'seconds': t, 'ratios': ratios, 'floor_seconds': floor,
                       'settled': not args.no_settle, 'load_average': [load_before, load_after],
                       'ten_jobs_written': written, 'ten_jobs_du': grown}, f, indent=1)


if __name__ == '__main__':
    main()

"""Big arrays through jobs: hither_fs against ``np.save`` + ``np.load`` of the same bytes.

    python bench/arrays.py [--gib G] [--repeat N] [--dir D] [--json FILE]

Side by side in one run, on the same disk (``--dir``, default the system's temp
directory), each measure repeated ``--repeat`` times (at least 3), the two
contenders taking turns so that the disk's moods hit both alike:

* **in**: ``array_sum.run(x=a).wait()`` - a G GiB float64 array into a job that
  returns its sum (the array is hashed and written to the store by the
  submitter, read and checked by the job's process) - against
  ``np.save(path, a); float(np.load(path).sum())``. Each repetition changes
  one element, so every run stores new bytes (no deduplication helps).
* **out**: ``make_array.run(n, v).wait()`` - a job that makes a G GiB array
  (``np.full``) and returns it - against ``np.save(path, np.full(n, v));
  np.load(path)``.
* **10 jobs, one array**: the same G GiB array passed to 10 jobs; the bytes the
  submitting process wrote (``wchar`` and ``write_bytes`` of /proc/self/io;
  the job processes only read it) and the bytes on disk under the root (du).

Ratios (of the medians, and of the minimums) are given against ``np.save`` +
``np.load`` alone, and against the same plus the computing the job does (the
sum; the ``np.full``), timed apart in the same baseline run. Workers are
started and warm before anything is timed.

The floor of hither_fs here is two sha1 passes over the bytes (the writer names
the blob, the reader checks it; about 0.55 s per GiB each on a core with SHA
instructions), which ``np.save`` + ``np.load`` do not pay: on a disk that
takes the bytes at page-cache speed, that alone is more than 1.5x.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hither_fs as hi  # noqa: E402


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


def stats(xs):
    return min(xs), statistics.median(xs), max(xs)


def run(gib, repeat, workdir):
    n = int(gib * (1 << 30)) // 8
    nbytes = n * 8
    root = os.path.join(workdir, 'root')
    npy = os.path.join(workdir, 'plain.npy')
    t = {k: [] for k in ('in', 'in_np', 'in_np_io', 'out', 'out_np', 'out_np_io')}
    handler = hi.ParallelJobHandler(num_workers=2)
    try:
        with hi.Config(job_handler=handler, root=root):
            assert array_sum.run(x=np.ones(10)).wait() == 10.0  # workers up, function imported
            assert make_array.run(n=3, value=1.0).wait().sum() == 3.0
            a = np.random.default_rng(0).random(n)
            for rep in range(repeat):
                a[0] = rep  # new bytes for each repetition
                expected = float(a.sum())

                t0 = time.perf_counter()
                assert array_sum.run(x=a).wait() == expected
                t['in'].append(time.perf_counter() - t0)
                remove_tree_files(os.path.join(root), '.npy')

                t0 = time.perf_counter()
                np.save(npy, a)
                b = np.load(npy)
                t1 = time.perf_counter()
                assert float(b.sum()) == expected
                t['in_np'].append(time.perf_counter() - t0)
                t['in_np_io'].append(t1 - t0)
                del b
                os.unlink(npy)

                value = 0.5 + rep
                t0 = time.perf_counter()
                out = make_array.run(n=n, value=value).wait()
                t['out'].append(time.perf_counter() - t0)
                assert out.shape == (n,) and out[-1] == value
                del out
                remove_tree_files(os.path.join(root), '.npy')

                t0 = time.perf_counter()
                c = np.full(n, value)
                t1 = time.perf_counter()
                np.save(npy, c)
                del c
                out = np.load(npy)
                t2 = time.perf_counter()
                assert out[-1] == value
                t['out_np'].append(t2 - t0)
                t['out_np_io'].append(t2 - t1)
                del out
                os.unlink(npy)

        # the same array to 10 jobs, in a fresh root
        root10 = os.path.join(workdir, 'root10')
        with hi.Config(job_handler=handler, root=root10):
            array_sum.run(x=np.ones(10)).wait()
            a[0] = -1.0
            expected = float(a.sum())
            before = proc_io()
            du0 = du(root10)
            jobs = [array_sum.run(x=a) for _ in range(10)]
            assert [j.wait() for j in jobs] == [expected] * 10
            after = proc_io()
            du1 = du(root10)
    finally:
        handler.halt()
    written = {k: after[k] - before[k] for k in ('wchar', 'write_bytes')}
    return nbytes, t, written, (du1[0] - du0[0], du1[1] - du0[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--gib', type=float, default=1.0, help='array size in GiB (default 1)')
    parser.add_argument('--repeat', type=int, default=3, help='repetitions of each measure (at least 3)')
    parser.add_argument('--dir', help='where the root and the .npy files go (default: the temp directory)')
    parser.add_argument('--json', help='also write the numbers to this file')
    args = parser.parse_args()
    repeat = max(3, args.repeat)
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        nbytes, t, written, grown = run(args.gib, repeat, workdir)
    gib = nbytes / (1 << 30)
    print('{:.3g} GiB float64 array, {} repetitions (seconds: min / median / max)'.format(gib, repeat))
    rows = [
        ('in:  hither_fs array_sum.run(x=a).wait()', t['in']),
        ('in:  np.save + np.load', t['in_np_io']),
        ('in:  np.save + np.load + sum', t['in_np']),
        ('out: hither_fs make_array.run(n).wait()', t['out']),
        ('out: np.save + np.load', t['out_np_io']),
        ('out: np.full + np.save + np.load', t['out_np']),
    ]
    for name, xs in rows:
        print('{:44} {:7.3f} {:7.3f} {:7.3f}'.format(name, *stats(xs)))
    ratios = {}
    print('hither_fs / baseline ({} baseline = np.save + np.load; +work = the same plus the job\'s own sum or '
          'np.full), target <= 1.5x:'.format('io'))
    for what in ('in', 'out'):
        ratios[what] = {}
        for how, pick in (('median', statistics.median), ('min', min)):
            mine = pick(t[what])
            io_only, same_work = pick(t[what + '_np_io']), pick(t[what + '_np'])
            ratios[what][how] = (mine / io_only, mine / same_work)
            print('  {:4} {:6}  vs io: {:.2f}x   vs io+work: {:.2f}x'.format(what, how, mine / io_only,
                                                                         mine / same_work))
    print('10 jobs of the same array: submitter wrote {:.3f} GiB (wchar), {:.3f} GiB (write_bytes); the root grew '
          'by {:.3f} GiB on disk ({:.3f} GiB apparent) (target <= 1.1 GiB)'.format(
              written['wchar'] / 2 ** 30, written['write_bytes'] / 2 ** 30, grown[0] / 2 ** 30, grown[1] / 2 ** 30))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'bytes': nbytes, 'seconds': t, 'ratios': ratios, 'ten_jobs_written': written,
                       'ten_jobs_du': grown}, f, indent=1)


if __name__ == '__main__':
    main()

"""200 jobs of 50 ms on Slurm: hither_fs's SlurmJobHandler against submitit, on one cluster, in one run.

    python bench/slurm_vs_submitit.py [--jobs 200] [--seconds 0.05]

Needs a Slurm cluster (``sudo slurm/cluster.sh start`` gives a local one; set
SLURM_CONF as it prints) and ``pip install submitit``.

* hither_fs: ``SlurmJobHandler(max_allocations=2, slots=4)`` - two sbatch
  allocations of 4 slots each, jobs flowing through the shared root.
* submitit: ``AutoExecutor`` with a job array of all jobs
  (``map_array``), at most 8 array tasks at once.

Both start from nothing (no warm allocations) and end when every result is
back in the submitting process. Both can run 8 jobs at once.
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
# submitit pickles functions by reference: its jobs import them from here
os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (HERE, os.environ.get('PYTHONPATH')) if p)

import hither_fs as hi  # noqa: E402
from sleeper import nap, nap_plain  # noqa: E402


def wait_for_empty_cluster(timeout=120):
    """Both contenders start on an idle cluster."""
    from hither_fs.slurm import _run
    deadline = time.monotonic() + timeout
    while _run(['squeue', '--noheader']).strip():
        if time.monotonic() > deadline:
            sys.exit('the cluster is busy (squeue is not empty): run this benchmark on an idle cluster')
        time.sleep(0.5)


def bench_hither(n, seconds, workdir):
    handler = hi.SlurmJobHandler(max_allocations=2, slots=4, idle_timeout=10, time_limit='00:30:00')
    root = os.path.join(workdir, 'root')
    with hi.Config(job_handler=handler, root=root):
        t0 = time.perf_counter()
        jobs = [nap.run(i=i, seconds=seconds) for i in range(n)]
        results = [j.wait() for j in jobs]
        elapsed = time.perf_counter() - t0
    assert results == list(range(n))
    handler.cancel_allocations(hi.Root.get(root))  # free the CPUs for the next contender
    return elapsed, len(handler.history)


def bench_submitit(n, seconds, workdir):
    import submitit
    executor = submitit.AutoExecutor(folder=os.path.join(workdir, 'submitit', '%j'), cluster='slurm')
    executor.update_parameters(timeout_min=30, cpus_per_task=1, mem_gb=1, slurm_array_parallelism=8)
    t0 = time.perf_counter()
    jobs = executor.map_array(nap_plain, list(range(n)), [seconds] * n)
    results = [j.result() for j in jobs]
    elapsed = time.perf_counter() - t0
    assert results == list(range(n))
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--jobs', type=int, default=200)
    parser.add_argument('--seconds', type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get('HITHER_FS_BENCH_DIR')) as workdir:
        os.chmod(workdir, 0o700)
        wait_for_empty_cluster()
        t_hither, allocations = bench_hither(args.jobs, args.seconds, workdir)
        wait_for_empty_cluster()
        t_submitit = bench_submitit(args.jobs, args.seconds, workdir)
    print('{} jobs of {:.0f} ms on Slurm, 8 at a time'.format(args.jobs, args.seconds * 1000))
    print('{:44} {:>8}'.format('', 'seconds'))
    print('{:44} {:8.1f}'.format('hither_fs SlurmJobHandler ({} allocations)'.format(allocations), t_hither))
    print('{:44} {:8.1f}'.format('submitit (job array of {})'.format(args.jobs), t_submitit))
    print('hither_fs takes {:.2f}x the time of submitit ({:.1f}x faster)'.format(
        t_hither / t_submitit, t_submitit / t_hither))


if __name__ == '__main__':
    main()

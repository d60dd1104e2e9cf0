# Memoization: the second run of the same pipeline executes none of its functions.
import sys
import time

import numpy as np

import hither_fs as hi


@hi.function('slow_square', '0.1.0')
def slow_square(x):
    time.sleep(0.5)
    print('computing slow_square')  # shows up in the job's stdout.txt
    return x * x


@hi.function('total', '0.1.0')
def total(values):
    return float(np.sum(values))


def pipeline():
    jobs = [slow_square.run(x=np.arange(5) + k) for k in range(4)]
    return total.run(values=jobs)


if __name__ == '__main__':
    cache = hi.JobCache()  # entries live in the root; hi.JobCache(path) for a shared cache
    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=4), job_cache=cache,
                   force_run='--force' in sys.argv):
        for attempt in ('first', 'second'):
            t0 = time.time()
            result = pipeline().wait()
            print('{} run: total = {} in {:.2f} s'.format(attempt, result, time.time() - t0))

# A run to look at: a small pipeline on 4 local workers, a few of its jobs failing
# (and the jobs downstream of them), then one HTML page of it:
#
#   python examples/report_example.py      # writes report.html
import subprocess
import sys
import time

import hither_fs as hi


@hi.function('simulate', '0.1.0')
def simulate(seed):
    time.sleep(0.2 + 0.1 * (seed % 4))
    return seed


@hi.function('fit', '0.1.0')
def fit(sample):
    time.sleep(0.3)
    if sample % 7 == 3:
        raise ValueError('fit did not converge for sample {}'.format(sample))
    return sample * 2


@hi.function('summarize', '0.1.0')
def summarize(values):
    time.sleep(0.2)
    return sum(values)


if __name__ == '__main__':
    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=4), label='report-example'):
        fits = [fit.run(sample=simulate.run(seed=i)) for i in range(16)]
        good = [summarize.run(values=fits[i:i + 4]) for i in range(0, 16, 4)]
        hi.wait()
    print('{} of {} summaries computed'.format(sum(1 for j in good if j.status == 'finished'), len(good)))
    sys.exit(subprocess.call([sys.executable, '-m', 'hither_fs', 'report', '--html', 'report.html']))

"""The progress line of ``hi.wait()`` and ``job.wait()``: drawn by tqdm on a real terminal (a
pseudo-terminal, tests/terminal.py) and in a real Jupyter notebook; silent when the output is
redirected, unless asked; ``hi.Config(progress=False)`` silences it on a terminal too.

On the terminal, the jobs block until the test creates a file, so the test decides what the
line must show next (two running and two queued, then two finished with an estimate, then all
four finished) and waits for the line to show it.
"""

import html
import os
import re
import signal
import subprocess
import sys
import textwrap

import hither_fs as hi
from conftest import REPO, TESTS, jupyter_kernel, need_slurm, run_python
from hither_fs.slurm import scancel
from jobfuncs import add, sleepy
from terminal import Terminal
from test_jobs import wait_for_file

SCRIPT = textwrap.dedent('''\
    import os
    import time

    import hither_fs as hi


    @hi.function('held', '0.1.0')
    def held(x, go):
        while not os.path.exists(go):  # until the test says so
            time.sleep(0.02)
        return x


    @hi.function('nap', '0.1.0')
    def nap(seconds):
        time.sleep(seconds)  # longer than the second after which a wait shows its line
        return seconds


    D = os.environ.get('TEST_DIR', '')
    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=2){options}):
    {body}
    print('done', flush=True)
    ''')

HELD = '''\
    jobs = [held.run(x=i, go=os.path.join(D, 'go{}'.format(i // 2))) for i in range(4)]
    hi.wait()
    print('results', [job.get_result() for job in jobs], flush=True)
    print('single', nap.run(seconds=1.6).wait(), flush=True)'''

NAPS = '''\
    jobs = [nap.run(seconds=1.6) for _ in range(2)]
    hi.wait()
    print('results', [job.get_result() for job in jobs], flush=True)'''

#: The line as tqdm draws it: counts done over all, elapsed<remaining, and the counts by status.
LINE = r'hither_fs: +\d+%\|[^|]*\| {done}/{total} jobs \[(\d\d:\d\d)<({eta}), {counts}\]'


def script(tmp_path, body: str, options: str = '') -> str:
    path = tmp_path / 'script.py'
    path.write_text(SCRIPT.format(options=options, body=body))
    return str(path)


def test_the_line_on_a_terminal_counts_jobs_by_status_with_an_estimate(root_path, tmp_path):
    term = Terminal(script(tmp_path, HELD), env={'TEST_DIR': str(tmp_path)})
    try:
        # both workers run one job each, two wait; nothing has ended, so no estimate yet
        term.expect(LINE.format(done=0, total=4, eta=r'\?', counts='0 finished, 0 failed, 2 running, 2 queued'))
        (tmp_path / 'go0').touch()
        two = term.expect(LINE.format(done=2, total=4, eta=r'\d\d:\d\d',
                                      counts='2 finished, 0 failed, 2 running, 0 queued'))
        (tmp_path / 'go1').touch()
        term.expect(r'results \[0, 1, 2, 3\]')
        term.expect(r'single 1\.6\r\ndone')
        assert term.wait() == 0
    finally:
        term.kill()
    out = term.output
    elapsed, eta = two.groups()
    assert elapsed >= '00:01' and eta >= '00:00'
    # redrawn in place (a carriage return before each drawing), left on screen at the end
    assert re.search(r'\r' + LINE.format(done=4, total=4, eta='00:00',
                                         counts='4 finished, 0 failed, 0 running, 0 queued') + r'\r\n', out)
    # job.wait() of the single job drew a line of its own, and cleared it when the job was done
    single = re.search(LINE.format(done=0, total=1, eta=r'\?', counts=r'0 finished, 0 failed, 1 running, 0 queued'),
                       out)
    assert single and out.index('results') < single.start() < out.index('single 1.6')


def test_no_line_when_the_output_is_redirected(root_path, tmp_path):
    proc = run_python(script(tmp_path, NAPS))
    assert proc.returncode == 0, proc.stderr
    assert 'results [1.6, 1.6]' in proc.stdout
    assert 'hither_fs:' not in proc.stderr and 'jobs [' not in proc.stderr, proc.stderr


def test_progress_true_draws_the_line_even_when_redirected(root_path, tmp_path):
    proc = run_python(script(tmp_path, NAPS, options=', progress=True'))
    assert proc.returncode == 0, proc.stderr
    assert re.search(LINE.format(done=2, total=2, eta='00:00', counts='2 finished, 0 failed, 0 running, 0 queued'),
                     proc.stderr), proc.stderr


def test_progress_false_draws_nothing_on_a_terminal(root_path, tmp_path):
    term = Terminal(script(tmp_path, NAPS, options=', progress=False'))
    try:
        term.expect(r'results \[1\.6, 1\.6\]\r\ndone')
        assert term.wait() == 0
    finally:
        term.kill()
    assert 'hither_fs:' not in term.output and 'jobs [' not in term.output, term.output


CELLS = [
    'import hither_fs as hi',
    ("@hi.function('nb_nap', '0.1.0')\ndef nb_nap(x):\n    import time\n    time.sleep(1.6)\n    return x"),
    ('with hi.Config(root=ROOT, job_handler=hi.ParallelJobHandler(2)):\n'
     '    jobs = [nb_nap.run(x=x) for x in range(2)]\n'
     '    hi.wait(120)\n'
     "print('results', [job.get_result() for job in jobs])"),
]


def test_the_line_in_a_jupyter_notebook(tmp_path, monkeypatch):
    """In a real kernel (as tests/test_notebook.py runs one): tqdm's widget when ipywidgets is
    installed, its text line in the cell's output otherwise."""
    nbformat, NotebookClient = jupyter_kernel(tmp_path, monkeypatch)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in ['ROOT = {!r}'.format(str(tmp_path / 'root'))] + CELLS]
    NotebookClient(nb, timeout=120, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()

    outputs = nb.cells[-1].outputs
    assert "results [0, 1]" in ''.join(o.get('text', '') for o in outputs if o.get('name') == 'stdout')
    done = LINE.format(done=2, total=2, eta='00:00', counts='2 finished, 0 failed, 0 running, 0 queued')
    widgets = [o for o in outputs if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    if widgets:  # tqdm.notebook: the widget's last state, as nbclient keeps it in the notebook
        models = [m['state'] for m in nb.metadata['widgets']['application/vnd.jupyter.widget-state+json']['state']
                  .values()]
        bar = [m for m in models if m['_model_name'] == 'FloatProgressModel']
        assert len(bar) == 1 and bar[0]['value'] == bar[0]['max'] == 2 and bar[0]['bar_style'] == 'success'
        text = ' | '.join(html.unescape(m['value']).replace('\u2007', ' ') for m in models
                          if m['_model_name'] == 'HTMLModel')
        assert re.search(r'hither_fs: 100% \| +2/2 jobs \[\d\d:\d\d<00:00, 2 finished, 0 failed, 0 running, 0 queued\]',
                         text), text
    else:  # tqdm's text line, on the kernel's stderr
        stderr = ''.join(o.get('text', '') for o in outputs if o.get('name') == 'stderr')
        assert re.search(done, stderr), stderr


# -- what the submitting side logs (the ``hither_fs`` logger) ---------------------------------------------

class QueueOnly(hi.JobHandler):
    """A real handler that only names a queue: the test starts (and kills) the workers itself."""

    def __init__(self, name):
        self.name = name

    def queue_for(self, root):
        return self.name


def start_worker(root_path, queue, log_file):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    with open(log_file, 'ab') as log:
        return subprocess.Popen([sys.executable, '-m', 'hither_fs', 'worker', '--root', root_path, '--queue', queue,
                                 '--heartbeat', '0.5', '--log-level', 'info'], env=env, cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def test_local_workers_started_are_logged(root_path, parallel, caplog):
    with caplog.at_level('INFO', logger='hither_fs'):
        with hi.Config(job_handler=parallel(2)):
            assert add.run(x=1, y=2).wait(timeout=60) == 3
    started = [r.getMessage() for r in caplog.records if r.name == 'hither_fs.handlers']
    assert len(started) == 2 and all(re.match(r'started local worker pid \d+ for queue local-\w+ \(1 slot; log: /',
                                              m) for m in started), started


def test_a_job_run_again_after_its_worker_was_lost_is_logged(root_path, tmp_path, caplog):
    pid_file = str(tmp_path / 'pid')
    with hi.Config(job_handler=QueueOnly('q-lost')):
        job = sleepy.run(seconds=3, pid_file=pid_file, result='ok')
    first = start_worker(root_path, 'q-lost', tmp_path / 'first.log')
    second = None
    try:
        wait_for_file(pid_file)
        first.send_signal(signal.SIGKILL)  # the worker, not its job: lost without a word
        first.wait()
        second = start_worker(root_path, 'q-lost', tmp_path / 'second.log')
        with caplog.at_level('INFO', logger='hither_fs'), hi.Config(progress=True):
            assert job.wait(timeout=60) == 'ok'
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(30)
    lost = first.pid
    # where it was noticed: the worker that took the job back
    assert re.search(r'job {}: its worker \S+-{}\S* was lost \(.*\); queued again to run once more \(attempt 2\)'
                     .format(job.id, lost), (tmp_path / 'second.log').read_text())
    # and the waiting script, as its progress line counted the job again
    said = [r.getMessage() for r in caplog.records if r.name == 'hither_fs.progress']
    assert any(m.startswith('job {} (sleepy) runs again: '.format(job.id)) and '-{}'.format(lost) in m
               for m in said), said


HELD_ALLOCATION = textwrap.dedent('''\
    import logging

    import hither_fs as hi

    logging.basicConfig(level=logging.INFO, format='LOG %(name)s: %(message)s')


    @hi.function('quick', '0.1.0')
    def quick(x):
        return x


    # an allocation Slurm holds (sbatch --hold): it stays pending, with Slurm's reason JobHeldUser
    handler = hi.SlurmJobHandler(max_allocations=1, sbatch_args=['--hold'], squeue_interval=2, idle_timeout=15)
    with hi.Config(job_handler=handler):
        job = quick.run(x=1)
        job.wait()
    ''')


def test_on_slurm_the_line_and_the_log_say_why_the_allocation_waits(root_path, tmp_path):
    need_slurm()
    path = tmp_path / 'held.py'
    path.write_text(HELD_ALLOCATION)
    term = Terminal(str(path), columns=200)
    sid = None
    try:
        sid = term.expect(r'LOG hither_fs\.slurm: sbatch submitted allocation (\d+) \(4 slots\) for queue slurm-\w+: '
                          r'sbatch --parsable --job-name=hither-fs-slurm-\S+ .*--hold \S+worker\.sbatch\r\n',
                          timeout=60).group(1)
        term.expect(r'LOG hither_fs\.slurm: allocation {} for queue slurm-\w+ is pending in Slurm: JobHeldUser'
                    .format(sid), timeout=60)
        term.expect(LINE.format(done=0, total=1, eta=r'\?', counts='0 finished, 0 failed, 0 running, 1 queued; '
                                'allocation {} pending: JobHeldUser'.format(sid)), timeout=60)
        term.type('\x03')
        term.expect(r'hither_fs: cancelled 1 job\. ')
        term.wait()
    finally:
        term.kill()
        if sid is not None:
            scancel([sid])

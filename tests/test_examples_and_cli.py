"""The examples give the seeds' answers; a killed submitter's jobs finish; the CLI shows the root."""

import json
import os
import re
import signal
import subprocess
import sys
import time


import hither_fs as hi
from conftest import REPO, TESTS, run_python


def test_parallel_example(root_path):
    proc = run_python('examples/parallel_example.py')
    assert proc.returncode == 0, proc.stderr
    assert 'Results: [0, 1, 4, 9, 16, 25, 36, 49]' in proc.stdout
    elapsed = float(re.search(r'Elapsed time: ([\d.]+) sec', proc.stdout).group(1))
    assert elapsed < 8.0  # ideal 2 s (8 jobs of 1 s on 4 workers); a smoke bound for a loaded machine, see bench/ for speed


def test_pipeline_example(root_path):
    proc = run_python('examples/pipeline_example.py')
    assert proc.returncode == 0, proc.stderr
    assert 'x = [16 25]  product = [16. 25.]' in proc.stdout


def test_run_by_name_example(root_path):
    proc = run_python('examples/run_by_name.py')
    assert proc.returncode == 0, proc.stderr
    assert 'add by name on a worker: [1, 2, 3]' in proc.stdout


def test_caching_example_second_run_executes_nothing(root_path):
    first = run_python('examples/caching_example.py')
    assert first.returncode == 0, first.stderr
    assert 'first run: total = 310.0' in first.stdout
    assert 'second run: total = 310.0' in first.stdout
    again = run_python('examples/caching_example.py')
    assert again.returncode == 0, again.stderr
    assert 'first run: total = 310.0' in again.stdout
    # only jobs that really ran have runtime facts: the first run's 4 slow_square jobs and 1 total
    states = [json.load(open(os.path.join(d, 'state.json')))
              for d, _, files in os.walk(os.path.join(root_path, 'jobs')) if 'state.json' in files]
    assert len([s for s in states if 'runtime' in s]) == 5


SUBMITTER = '''
import sys, time
import hither_fs as hi
from jobfuncs import sleepy, add
with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=2)):
    a = sleepy.run(seconds=1.5, result=20)
    b = sleepy.run(seconds=1.5, result=1)
    c = add.run(x=a, y=b)
print(a.id, b.id, c.id, flush=True)
time.sleep(600)
'''


def test_killed_submitter_leaves_its_jobs_to_finish(root_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.Popen([sys.executable, '-c', SUBMITTER], stdout=subprocess.PIPE, text=True, env=env)
    ids = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    jobs = [hi.get_job(i) for i in ids]
    assert jobs[2].status == 'pending'  # its dependency is recorded in the root
    assert jobs[2].wait(timeout=60) == 21
    # with their submitter gone and nothing left to do, the workers exit
    workers = os.path.join(root_path, 'workers')
    deadline = time.monotonic() + 30
    while os.listdir(workers):
        assert time.monotonic() < deadline, os.listdir(workers)
        time.sleep(0.05)


def hither_fs_cli(*args):
    proc = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', *args)
    return proc


def test_cli_ls_show_logs_cancel(root_path):
    from jobfuncs import noisy, add

    class Nobody(hi.JobHandler):
        def queue_for(self, root):
            return 'nobody'
    done = noisy.run(n=2)
    done.wait()
    with hi.Config(job_handler=Nobody()):
        waiting = add.run(x=1, y=2)

    out = hither_fs_cli('ls').stdout
    assert re.search(r'{}\s+finished\s+noisy'.format(done.id), out), out
    assert re.search(r'{}\s+queued\s+add'.format(waiting.id), out), out

    shown = json.loads(hither_fs_cli('show', done.id).stdout)
    assert shown['state']['status'] == 'finished'
    assert shown['spec']['function']['name'] == 'noisy'
    assert shown['state']['result'] == {'value': 2}
    assert shown['directory'] == done.directory

    assert hither_fs_cli('logs', done.id).stdout == 'line 0\nline 1\nto stderr\n'
    assert hither_fs_cli('logs', '--stderr', done.id).stdout == 'to stderr\n'

    cancelled = hither_fs_cli('cancel', waiting.id)
    assert cancelled.returncode == 0 and 'cancelled' in cancelled.stdout
    assert waiting.status == 'cancelled'
    assert hither_fs_cli('cancel', done.id).returncode == 1

    missing = hither_fs_cli('show', '0123456789abcdef')
    assert missing.returncode != 0 and 'no job 0123456789abcdef' in missing.stderr


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), 'hither-fs')  # installed next to this Python
    proc = subprocess.run([script, '--help'], capture_output=True, text=True)
    assert proc.returncode == 0 and 'worker' in proc.stdout

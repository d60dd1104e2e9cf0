"""Ctrl-C in a wait, typed on a real terminal: the first cancels the unfinished jobs the script
submitted (and says how many, and how to keep them running), unless they were submitted with
``detach=True`` or the wait runs under ``cancel_on_interrupt=False``; a second Ctrl-C while it
cancels stops at once.

Each script runs on a pseudo-terminal of its own (tests/terminal.py). Its jobs block until the
test creates a file, so what runs, waits or ends is decided by the test, never by timing; the
script is known to be inside its wait when its progress line shows the jobs running.
"""

import os
import re
import signal
import textwrap
import time

import hither_fs as hi
from terminal import Terminal

SCRIPT = textwrap.dedent('''\
    import os
    import time

    import hither_fs as hi


    @hi.function('held', '0.1.0')
    def held(x, go):
        while not os.path.exists(go):  # until the test says so (or the job is killed)
            time.sleep(0.02)
        return x


    D = os.environ.get('TEST_DIR', '')
    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=2){options}):
        jobs = [held.run(x=i, go=os.path.join(D, 'go')) for i in range(6)]
        print('ids', ' '.join(job.id for job in jobs), flush=True)
    {wait}
    print('the wait returned', flush=True)
    ''')


def start(tmp_path, options: str = '', wait: str = 'hi.wait()') -> Terminal:
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT.format(options=options, wait=wait))
    return Terminal(str(script), env={'TEST_DIR': str(tmp_path)})


def ended_by_ctrl_c(status: int) -> bool:
    """Python ends on an uncaught KeyboardInterrupt by SIGINT (exit code 1 before 3.8)."""
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT or os.WEXITSTATUS(status) == 1


def test_first_ctrl_c_cancels_the_jobs_the_script_submitted(root_path, tmp_path):
    term = start(tmp_path)
    try:
        ids = term.expect(r'ids ([0-9a-f ]+)\r\n').group(1).split()
        term.expect(r'0/6 jobs \[[^\]]*2 running, 4 queued')  # in hi.wait(): two run, four wait for a worker
        term.type('\x03')
        said = term.expect(r'hither_fs: cancelled 6 jobs \(2 running: their workers kill them now\)\. '
                           r'To keep jobs running after Ctrl-C, use hi\.Config\(cancel_on_interrupt=False\)')
        assert ended_by_ctrl_c(term.wait())
    finally:
        term.kill()
    out = term.output
    assert 'interrupted: cancelling the 6 unfinished jobs this process submitted' in out
    assert out.index('cancelling the 6') < said.start()
    assert 'KeyboardInterrupt' in out and 'the wait returned' not in out
    # in the root: the queued ones never ran, the running ones were killed by their workers
    assert [hi.get_job(i).wait_done(timeout=30) for i in ids] == ['cancelled'] * 6
    assert not os.path.exists(tmp_path / 'go')


def test_detached_jobs_run_on_after_ctrl_c(root_path, tmp_path):
    term = start(tmp_path, options=', detach=True')
    try:
        ids = term.expect(r'ids ([0-9a-f ]+)\r\n').group(1).split()
        term.expect(r'0/6 jobs \[[^\]]*2 running, 4 queued')
        term.type('\x03')
        assert ended_by_ctrl_c(term.wait())
    finally:
        term.kill()
    assert 'KeyboardInterrupt' in term.output and 'hither_fs: ' not in term.output.replace('hither_fs:  ', '')
    (tmp_path / 'go').touch()  # the script is gone; its workers finish its jobs
    jobs = [hi.get_job(i) for i in ids]
    assert [job.wait_done(timeout=60) for job in jobs] == ['finished'] * 6
    assert [job.get_result() for job in jobs] == list(range(6))


def test_a_wait_under_cancel_on_interrupt_false_leaves_the_jobs_running(root_path, tmp_path):
    # job.wait() this time, and the option set around the wait rather than the submission
    term = start(tmp_path, wait='with hi.Config(cancel_on_interrupt=False):\n    jobs[-1].wait()')
    try:
        ids = term.expect(r'ids ([0-9a-f ]+)\r\n').group(1).split()
        term.expect(r'0/1 jobs \[[^\]]*1 queued')  # job.wait()'s line: the last job, queued behind two
        term.type('\x03')
        term.expect(r'hither_fs: interrupted; the 6 unfinished jobs this process submitted keep running '
                    r'\(cancel_on_interrupt=False\); `hither-fs cancel --run \S+` cancels them')
        assert ended_by_ctrl_c(term.wait())
    finally:
        term.kill()
    (tmp_path / 'go').touch()
    assert [hi.get_job(i).wait_done(timeout=60) for i in ids] == ['finished'] * 6


MANY = textwrap.dedent('''\
    import hither_fs as hi


    @hi.function('unserved', '0.1.0')
    def unserved(x):
        return x


    # a compute resource nobody runs: the jobs stay queued until cancelled
    with hi.Config(job_handler=hi.RemoteJobHandler(compute_resource_id='nobody')):
        jobs = [unserved.run(x=i) for i in range({n})]
        print('first', jobs[0].id, 'last', jobs[-1].id, flush=True)
        hi.wait()
    ''')


def test_a_second_ctrl_c_stops_cancelling_at_once(root_path, tmp_path):
    n = 3000  # cancelling them takes about a second here: the second Ctrl-C comes a few milliseconds in
    script = tmp_path / 'many.py'
    script.write_text(MANY.format(n=n))
    term = Terminal(str(script))
    try:
        first, last = term.expect(r'first (\w+) last (\w+)\r\n', timeout=120).groups()
        term.expect(r'0/{} jobs \['.format(n))
        term.type('\x03')
        term.expect(r'cancelling the {} unfinished jobs this process submitted \(Ctrl-C again to stop\)'.format(n))
        # the newest is cancelled first: once it is, the script is at it
        assert hi.get_job(last).wait_done(timeout=30) == 'cancelled'
        term.type('\x03')
        typed = time.monotonic()
        assert ended_by_ctrl_c(term.wait())
        took = time.monotonic() - typed
    finally:
        term.kill()
    stopped = re.search(r'second Ctrl-C: stopped cancelling after (\d+) of {} jobs; the others go on '
                        r'\(`hither-fs cancel --run \S+` cancels them\)'.format(n), term.output)
    assert stopped, term.output
    assert int(stopped.group(1)) < n and 'hither_fs: cancelled' not in term.output
    assert took < 5, took
    # the newest were cancelled first; the oldest is still queued
    assert hi.get_job(last).status == 'cancelled'
    assert hi.get_job(first).status == 'queued'

"""Hither functions for the warm runner tests (importable by worker processes)."""

import os
import subprocess
import sys
import threading
import time

import hither_fs as hi

#: How often this module was imported in the process, and how many jobs ran here since.
IMPORTS = [1]
CALLS = []
KEPT = []


@hi.function('where', '0.1.0')
def where(x):
    """The process and what it has seen: its pid, the module's imports and calls so far."""
    CALLS.append(x)
    print('job', x)
    sys.stderr.write('err {}\n'.format(x))
    return {'pid': os.getpid(), 'imports': len(IMPORTS), 'calls': len(CALLS), 'cwd': os.getcwd(),
            'env': os.environ.get('RUNNER_TEST_VAR'), 'path_has_marker': '/runner-test-marker' in sys.path,
            'job_id': os.environ.get('HITHER_FS_JOB_ID'), 'umask': _umask()}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@hi.function('meddle', '0.1.0')
def meddle(directory):
    """Changes what the runner must put back: the environment, cwd, sys.path, sys.stdout."""
    os.environ['RUNNER_TEST_VAR'] = 'changed'
    os.chdir(directory)
    os.umask(0o077)
    sys.path.append('/runner-test-marker')
    sys.stdout = sys.stderr
    return os.getpid()


@hi.function('leave_thread', '0.1.0')
def leave_thread(seconds):
    threading.Thread(target=time.sleep, args=(seconds,), daemon=True).start()
    return os.getpid()


@hi.function('leave_child', '0.1.0')
def leave_child(pid_file):
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    with open(pid_file, 'w') as f:
        f.write(str(proc.pid))
    return os.getpid()


@hi.function('exit_now', '0.1.0')
def exit_now(code):
    os._exit(code)


@hi.function('hold_memory', '0.1.0')
def hold_memory(megabytes, keep):
    """Touches ``megabytes`` of memory; with ``keep`` it stays in use after the job."""
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if keep:
        KEPT.append(block)
    return os.getpid()


@hi.function('spin', '0.1.0')
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


@hi.function('leave_daemon', '0.1.0')
def leave_daemon(seconds, text, done_file):
    """Starts a shell that goes on in the background (its parent shell exits at once),
    prints ``text`` after ``seconds`` and then makes ``done_file``: a process the job left
    behind, not its child."""
    os.system('(sleep {}; echo {}; touch {}) &'.format(seconds, text, done_file))
    return os.getpid()


@hi.function('fork_and_return', '0.1.0')
def fork_and_return(value):
    """Forks; the child ends with sys.exit(0), which the job's own code would not catch."""
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    os.waitpid(pid, 0)
    return value


@hi.function('say_then_exit', '0.1.0')
def say_then_exit(text, code):
    """Prints ``text`` to both streams, then ends its process at once."""
    print(text, flush=True)
    sys.stderr.write(text + '\n')
    sys.stderr.flush()
    os._exit(code)


@hi.function('say_then_leave_thread', '0.1.0')
def say_then_leave_thread(text):
    print(text, flush=True)
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    return os.getpid()


@hi.function('change_process', '0.1.0')
def change_process():
    """Changes what the kernel keeps per process, as libraries do: an ignored SIGCHLD, an
    alarm, a lower soft limit on open files, a blocked SIGTERM, one CPU."""
    import resource
    import signal
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, lambda *a: None)
    signal.alarm(600)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return os.getpid()


@hi.function('process_facts', '0.1.0')
def process_facts():
    """What a job finds of its process (and a command's exit status: an ignored SIGCHLD
    would make it 0)."""
    import resource
    import signal
    return {'pid': os.getpid(), 'rc': subprocess.run(['sh', '-c', 'exit 3']).returncode,
            'sigchld': str(signal.getsignal(signal.SIGCHLD)), 'sigusr2': str(signal.getsignal(signal.SIGUSR2)),
            'alarm': signal.alarm(0), 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            'blocked': sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            'cpus': len(os.sched_getaffinity(0)), 'nice': os.nice(0)}


@hi.function('unfixable', '0.1.0')
def unfixable(how):
    """Leaves its process in a state that cannot be put back."""
    if how == 'nice':
        os.nice(5)  # only a privileged process may lower it again
    elif how == 'stdout':
        with sys.stdout as out:  # closes sys.stdout on the way out
            out.write('bye\n')
    elif how == 'fds':
        for _ in range(300):
            os.open(os.devnull, os.O_RDONLY)
    return os.getpid()


@hi.function('close_inherited', '0.1.0')
def close_inherited(value):
    """Closes every descriptor above 2, as a daemon helper does before it execs."""
    os.closerange(3, 65536)
    return value


@hi.function('big_child', '0.1.0')
def big_child(megabytes):
    """Runs a child process that touches ``megabytes`` of memory."""
    subprocess.run([sys.executable, '-c', 'b = bytearray({} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1'.format(
        megabytes)], check=True)
    return os.getpid()


@hi.function('lazy_module', '0.1.0')
def lazy_module(path):
    """Leaves a lazily loaded module in sys.modules (importlib.util.LazyLoader, as optional
    dependencies often are) and never touches it: its code would raise."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('never_loaded_optional', path)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules['never_loaded_optional'] = module
    spec.loader.exec_module(module)
    return os.getpid()


@hi.function('helper_version', '0.1.0')
def helper_version(directory, edit_to=None):
    """VERSION of ``directory``'s ``versioned_helper``; with ``edit_to`` the file is edited
    while the job runs (a user saving a change during a long job)."""
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import versioned_helper
    version = versioned_helper.VERSION
    if edit_to is not None:
        with open(os.path.join(directory, 'versioned_helper.py'), 'w') as f:
            f.write('VERSION = {!r}\n'.format(edit_to))
    return {'pid': os.getpid(), 'version': version}


@hi.function('signal_deferred', '0.1.0')
def signal_deferred():
    """Handles SIGUSR1 itself and blocks it around a critical section, during which one
    arrives: it is still pending when the job returns."""
    import signal
    signal.signal(signal.SIGUSR1, lambda *args: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    os.kill(os.getpid(), signal.SIGUSR1)
    return os.getpid()

"""Hither functions used by the tests (importable by worker processes)."""

import os
import time

import numpy as np

import hither_fs as hi


@hi.function('echo', '0.1.0')
def echo(x):
    return x


@hi.function('add', '0.1.0')
def add(x, y):
    return x + y


@hi.function('sleepy', '0.1.0')
def sleepy(seconds, pid_file=None, result=None):
    if pid_file:
        with open(pid_file + '.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.replace(pid_file + '.tmp', pid_file)
    time.sleep(seconds)
    return result


@hi.function('fail', '0.1.0')
def fail(message):
    raise ValueError(message)


@hi.function('noisy', '0.1.0')
def noisy(n):
    import sys
    for i in range(n):
        print('line', i)
    print('to stderr', file=sys.stderr)
    return n


@hi.function('burn', '0.1.0')
def burn(seconds, megabytes):
    block = np.ones(megabytes * 1024 * 1024 // 8)  # touched: resident
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return float(block.sum())


@hi.function('counted', '0.1.0')
def counted(x, log):
    """Appends a line to ``log`` each time it really runs (lets tests count executions)."""
    with open(log, 'a') as f:
        f.write('{}\n'.format(x))
    return x * 2


@hi.function('make_file', '0.1.0')
def make_file(text):
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), 'made.txt')
    with open(path, 'w') as f:
        f.write(text)
    return hi.File(path)


@hi.function('read_file', '0.1.0')
def read_file(f):
    return f.read_text()


@hi.function('spawn_tree', '0.1.0')
def spawn_tree(pid_file):
    """Starts a grandchild that sleeps, records its pid, then sleeps itself."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    with open(pid_file + '.tmp', 'w') as f:
        f.write('{} {}'.format(os.getpid(), p.pid))
    os.replace(pid_file + '.tmp', pid_file)
    time.sleep(600)


@hi.function('sumsqr', '0.1.0')
def sumsqr(x):
    return np.sum(x ** 2)


@hi.function('tally', '0.1.0')
def tally(x, tally_dir):
    """Leaves one new file in ``tally_dir`` each time it really runs, wherever it runs (files
    made with O_EXCL, unlike lines appended to one file, add up across nodes' mounts)."""
    import uuid
    with open(os.path.join(tally_dir, '{}-{}'.format(x, uuid.uuid4().hex)), 'x') as f:
        f.write(os.uname().nodename)
    return x * 2


@hi.function('chaos_square', '0.1.0')
def chaos_square(i):
    import random
    time.sleep(random.random() * 0.02)
    return i * i


@hi.function('outer_job', '0.1.0')
def outer_job(x):
    """Submits and waits for a job of its own (in the submitting process's default handler)."""
    return add.run(x=x, y=1).wait() * 10


@hi.function('flaky', '0.1.0')
def flaky(flag):
    """Fails while the file ``flag`` exists."""
    if os.path.exists(flag):
        raise RuntimeError('flag is up')
    return 'ok'


@hi.function('make_list', '0.1.0')
def make_list(n):
    return list(range(n))


@hi.function('environment_seen', '0.1.0')
def environment_seen(names, marker):
    """What a job sees of its environment: some variables, and whether ``marker`` is on sys.path."""
    import sys
    return {'vars': {n: os.environ.get(n) for n in names}, 'marker_on_path': marker in sys.path,
            'prefix': sys.prefix, 'executable': sys.executable}


@hi.function('file_from_tempdir', '0.1.0')
def file_from_tempdir(text):
    """Makes a hi.File in a temporary directory and returns it after the directory is gone."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'made.txt')
        with open(path, 'w') as f:
            f.write(text)
        made = hi.File(path)
    assert not os.path.exists(d)
    assert made.read_text() == text  # readable here too, after its directory went
    return made


def _hex(array):
    """An array's bytes in C order, with x86 longdouble padding (never initialised) zeroed."""
    raw = bytearray(np.ascontiguousarray(array).tobytes())
    if array.dtype.type in (np.longdouble, np.clongdouble) and np.finfo(np.longdouble).nmant == 63:
        size = np.dtype(np.longdouble).itemsize
        for i in range(0, len(raw), size):
            raw[i + 10:i + size] = bytes(size - 10)
    return raw.hex()


def value_facts(x):
    """Exactly what a value is - types, dtypes (byte order, units, lengths, fields), shapes,
    memory order and bytes, nested - as JSON-able lists, for comparing two values bit for bit."""
    def kind(v):
        return type(v).__module__ + '.' + type(v).__qualname__
    if isinstance(x, np.ndarray):
        return [kind(x), x.dtype.str, repr(x.dtype), list(x.shape),
                bool(x.flags.f_contiguous and not x.flags.c_contiguous), _hex(x)]
    if isinstance(x, np.generic):
        return [kind(x), x.dtype.str, repr(x.dtype), _hex(np.asarray(x))]
    if isinstance(x, (list, tuple)):
        return [kind(x), [value_facts(v) for v in x]]
    if isinstance(x, dict):
        return [kind(x), [[k, value_facts(v)] for k, v in x.items()]]
    if isinstance(x, hi.File):
        return [kind(x), x.name, x.sha1]
    return [kind(x), repr(x)]


@hi.function('facts', '0.1.0')
def facts(x):
    """What the job received, exactly (see :func:`value_facts`)."""
    return value_facts(x)


@hi.function('huge_int', '0.1.0')
def huge_int(digits):
    """An int longer than Python writes as text by default (4300 digits)."""
    return 10 ** digits


@hi.function('keywords', '0.1.0')
def keywords(**kwargs):
    return sorted(kwargs)


@hi.function('gate', '0.1.0')
def gate(path, timeout):
    """Waits until ``path`` exists (True), or ``timeout`` seconds (False)."""
    import time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

"""Functions the container tests run in Apptainer (the image only has python3 and numpy)."""

import json
import os
import sys
import time

import numpy as np

import hither_fs as hi

from . import helpers
from .sub import deep

# Never pulled: the tests choose the image with hi.Config(container=...).
UNUSED_IMAGE = 'docker://example.invalid/not-pulled:latest'


@hi.function('container_facts', '0.1.0')
@hi.container(UNUSED_IMAGE)
def container_facts():
    import importlib.util
    import site
    print('hello from the container')
    print('and to stderr', file=sys.stderr)
    return {
        'python': sys.version,
        'numpy': np.__version__,
        'in_apptainer': 'APPTAINER_CONTAINER' in os.environ or 'SINGULARITY_CONTAINER' in os.environ,
        'in_docker': os.path.exists('/.dockerenv'),
        'uid': os.getuid(),
        'gid': os.getgid(),
        'groups': sorted(os.getgroups()),
        'user_site': bool(site.ENABLE_USER_SITE),
        'user_module_found': importlib.util.find_spec('leaky_user_module') is not None,
        'env': sorted(os.environ),
        'cwd': os.getcwd(),
        'hither_fs_file': hi.__file__,
    }


@hi.function('uses_local_code', '0.1.0', local_modules=['../containerlib'], additional_files=['*.config'])
@hi.container(UNUSED_IMAGE)
def uses_local_code(x):
    from containerlib import scale
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, 'params.config')) as f:
        params = json.load(f)
    try:
        with open(os.path.join(here, 'written-by-the-job.txt'), 'w'):
            pass
        code_writable = True
    except OSError:
        code_writable = False
    return {
        'code_writable': code_writable,
        'scaled': scale(x, params['factor']),
        'greeting': helpers.greeting(),
        'depth': deep.DEPTH,
        'files': sorted(os.listdir(here)),
        'init_size': os.path.getsize(os.path.join(here, '__init__.py')),
    }


@hi.function('sleep_in_container', '0.1.0')
@hi.container(UNUSED_IMAGE)
def sleep_in_container(seconds):
    print('going to sleep', flush=True)
    time.sleep(seconds)


@hi.function('sumsqr_in_container', '0.1.0')
@hi.container(UNUSED_IMAGE)
def sumsqr_in_container(x):
    return np.sum(x**2)


@hi.function('gpu_probe', '0.1.0')
@hi.container(UNUSED_IMAGE, gpu=True)
def gpu_probe():
    return os.path.exists('/dev/nvidia0')


@hi.function('fails_in_container', '0.1.0')
@hi.container(UNUSED_IMAGE)
def fails_in_container(message):
    raise ValueError(message)


@hi.function('container_limits', '0.1.0')
@hi.container(UNUSED_IMAGE)
def container_limits():
    """The network interfaces and the memory and CPU limits the job sees (cgroup v1 or v2)."""
    def read(*paths):
        for path in paths:
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError:
                pass
        return None
    return {
        'interfaces': sorted(os.listdir('/sys/class/net')),
        'memory_limit': read('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'),
        'cpu_quota': read('/sys/fs/cgroup/cpu.max', '/sys/fs/cgroup/cpu/cpu.cfs_quota_us',
                          '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us'),
    }


@hi.function('writes_into_the_root', '0.1.0')
@hi.container(UNUSED_IMAGE)
def writes_into_the_root(n):
    return np.arange(n, dtype=np.float64)

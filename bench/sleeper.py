"""The 50 ms job of the Slurm benchmark, as a hither function and as a plain one."""

import time

import hither_fs as hi


@hi.function('nap', '0.1.0')
def nap(i, seconds):
    time.sleep(seconds)
    return i


def nap_plain(i, seconds):
    time.sleep(seconds)
    return i

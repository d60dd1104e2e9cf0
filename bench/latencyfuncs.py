"""The functions bench/latency.py runs: each hither function and its plain twin for joblib
and dask (importable by hither's workers and by joblib's and dask's worker processes)."""

import time

import hither_fs as hi


@hi.function('noop', '0.1.0')
def noop(x):
    return x


@hi.function('step', '0.1.0')
def step(x):
    return x + 1


@hi.function('nap', '0.1.0')
def nap(seconds):
    """Sleep, then return when it ended (a waiter's lag is measured from there)."""
    time.sleep(seconds)
    return time.time()


def noop_plain(x):
    return x


def step_plain(x):
    return x + 1


@hi.function('nap_after', '0.1.0')
def nap_after(up, seconds):
    """Wait for ``up`` (a job: this one is pending until it ends), then sleep."""
    time.sleep(seconds)
    return up


def nap_plain(seconds):
    time.sleep(seconds)
    return time.time()


def nap_after_plain(up, seconds):
    time.sleep(seconds)
    return up

"""The no-op hither function the throughput benchmark runs (importable by workers)."""

import hither_fs as hi


@hi.function('noop', '0.1.0')
def noop(i):
    return i


def noop_plain(i):
    return i

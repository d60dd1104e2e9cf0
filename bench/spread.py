"""min / median / max of a benchmark's repeated measures, and their printed line."""

import statistics


def spread(values):
    """``(min, median, max)`` of ``values``."""
    return min(values), statistics.median(values), max(values)


def line(name, values, name_width, number='{:>8.0f}'):
    """``name`` and the spread of ``values`` in columns (``number`` formats each)."""
    return '{:<{}} '.format(name, name_width) + ' '.join(number.format(v) for v in spread(values))

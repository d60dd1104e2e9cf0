"""A local module outside the function's directory (taken along through local_modules)."""


def scale(x, factor):
    return x * factor

"""The part of hither_fs that runs where a job runs.

Everything in this package imports only the standard library and numpy and
works on Python 3.8+, so that it can run inside any container image that has
Python 3 and numpy, without hither_fs installed there.
"""

"""Hither functions for the container tests.

This file is the function directory's own ``__init__.py``: it is NOT taken
into containers (an empty one stands in), which the import below proves -
psutil is on the host but not in the test image.
"""

import psutil  # noqa: F401

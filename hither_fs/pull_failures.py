"""A failed image pull, remembered for a minute next to the image (``<image>.failed.json``), so
that the other jobs waiting for the same image fail at once with the same message instead
of each pulling again. Shared by the Apptainer and the Docker runners."""

import os
from typing import Optional

from .errors import ContainerError
from .runtime.files import HOST, fs_clock, read_json, remove_quietly, write_json

#: How long a failed pull is remembered (seconds).
FAILED_PULL_MEMORY = 60.0


def raise_if_failed_lately(path: str, url: str) -> None:
    """Raise the ``ContainerError`` of a pull of ``url`` that failed less than a minute ago (by the
    file system's clock), recorded at ``path``."""
    failed: Optional[dict] = read_json(path, None, missing_ok=True)
    if isinstance(failed, dict) and failed.get("url") == url:
        age = fs_clock(os.path.dirname(path)) - os.path.getmtime(path)
        if 0 <= age < FAILED_PULL_MEMORY:
            raise ContainerError("{} (a pull {:.0f} s ago on {})".format(failed["message"], age, failed["host"]))


def remember_failure(path: str, url: str, message: str) -> None:
    write_json(path, {"url": url, "message": message, "host": HOST})


def forget_failure(path: str) -> None:
    remove_quietly(path)

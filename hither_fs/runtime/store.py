"""A sha1 content-addressed store of arrays and files.

A blob's name is the sha1 of its bytes, so the same array passed to a
hundred jobs is stored once, and every read can check that the bytes are
still the ones that were written. Arrays are stored as ``.npy`` files
(``np.save`` with ``allow_pickle=False``) and loaded with
``allow_pickle=False``; object arrays are refused both ways.

Standard library and numpy only: this module also runs inside job containers.
"""

import hashlib
import os
import shutil

import numpy as np

from . import files
from .files import CorruptFileError, makedirs, remove_quietly, temp_name, with_parents

_CHUNK = 1 << 20


class BlobMissingError(Exception):
    """A blob referenced by a job or cache entry is not in the store."""


def sha1_of_file(path: str, regular_only: bool = False) -> str:
    """sha1 of a file's bytes. ``regular_only`` (files in the root): a symbolic link,
    FIFO or device raises :class:`CorruptFileError` instead of being followed or read
    (a FIFO would block forever, ``/dev/zero`` never end)."""
    h = hashlib.sha1()
    fd = files.open_regular(path) if regular_only else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


class Store:
    def __init__(self, path: str):
        self.path = path

    def blob_path(self, sha1: str, ext: str = "") -> str:
        if len(sha1) != 40 or any(c not in "0123456789abcdef" for c in sha1):
            raise ValueError("not a sha1: {!r}".format(sha1))
        if ext not in ("", ".npy"):
            raise ValueError("bad blob extension {!r}".format(ext))
        return os.path.join(self.path, sha1[:2], sha1 + ext)

    def _commit(self, tmp: str, ext: str) -> str:
        """Hash a finished temp file and rename it to its content address (over an
        existing copy: the same bytes, or a damaged copy that this one repairs)."""
        sha1 = sha1_of_file(tmp, regular_only=True)
        final = self.blob_path(sha1, ext)
        with_parents(lambda: os.replace(tmp, final), os.path.dirname(final))
        return sha1

    def _write_via_temp(self, fill, ext: str) -> str:
        tmp = temp_name(os.path.join(self.path, "incoming"))
        mode = files.file_mode(self.path)
        try:
            fd = with_parents(lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode),
                              self.path)
            with os.fdopen(fd, "wb") as f:
                if mode & 0o070:
                    os.fchmod(f.fileno(), mode)
                fill(f)
                if files.FSYNC:
                    f.flush()
                    os.fsync(f.fileno())
            return self._commit(tmp, ext)
        except OSError as exc:
            remove_quietly(tmp)
            # numpy reports a short write without errno: say what it most likely means
            raise OSError(exc.errno, "cannot write into the store at {}: {} (is the disk full, or a "
                          "file size limit in force?)".format(self.path, exc.strerror or exc)) from exc
        except BaseException:
            remove_quietly(tmp)
            raise

    def put_array(self, array: np.ndarray) -> str:
        if array.dtype.hasobject:
            raise TypeError("object arrays are not allowed (dtype {})".format(array.dtype))
        return self._write_via_temp(lambda f: np.save(f, array, allow_pickle=False), ".npy")

    def put_bytes(self, data: bytes) -> str:
        return self._write_via_temp(lambda f: f.write(data), "")

    def put_file(self, path: str) -> str:
        def copy(f):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, _CHUNK)
        return self._write_via_temp(copy, "")

    def has(self, sha1: str, ext: str = "") -> bool:
        return os.path.exists(self.blob_path(sha1, ext))

    def refresh(self, sha1: str, ext: str = "") -> bool:
        """Mark a blob as just stored (its mtime, which ``hither-fs gc`` respects), when it
        is used again without being written again. False if it is not there."""
        try:
            os.utime(self.blob_path(sha1, ext))
            return True
        except FileNotFoundError:
            return False

    def verified_path(self, sha1: str, ext: str = "") -> str:
        """Path of a blob whose bytes were just checked against its name."""
        path = self.blob_path(sha1, ext)
        try:
            actual = sha1_of_file(path, regular_only=True)
        except FileNotFoundError:
            raise BlobMissingError("blob {} is missing from the store at {}".format(sha1, path)) from None
        if actual != sha1:
            raise CorruptFileError(path, "content hash is {}, expected {}".format(actual, sha1))
        return path

    def get_bytes(self, sha1: str) -> bytes:
        """A blob's bytes, read once and checked against its name."""
        path = self.blob_path(sha1)
        try:
            with os.fdopen(files.open_regular(path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BlobMissingError("blob {} is missing from the store at {}".format(sha1, path)) from None
        actual = hashlib.sha1(data).hexdigest()
        if actual != sha1:
            raise CorruptFileError(path, "content hash is {}, expected {}".format(actual, sha1))
        return data

    def get_array(self, sha1: str) -> np.ndarray:
        path = self.verified_path(sha1, ".npy")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            # np.load raises ValueError for object arrays when pickles are refused
            raise CorruptFileError(path, "refused to load: {}".format(exc)) from None
        return array

    def copy_blob_from(self, other: "Store", sha1: str, ext: str = "") -> None:
        """Make a blob of ``other`` present here (hard link when possible)."""
        if self.refresh(sha1, ext):
            return
        src = other.verified_path(sha1, ext)
        dst = self.blob_path(sha1, ext)
        makedirs(os.path.dirname(dst))
        tmp = temp_name(dst)
        try:
            os.link(src, tmp)
            os.utime(tmp)  # a link shares the source's old mtime: young here, to hither-fs gc
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

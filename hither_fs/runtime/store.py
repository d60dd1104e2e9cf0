"""A sha1 content-addressed store of arrays and files.

A blob's name is the sha1 of its bytes, so the same array passed to a
hundred jobs is stored once, and every read can check that the bytes are
still the ones that were written. Arrays are stored as ``.npy`` files
(``np.save`` with ``allow_pickle=False``) and loaded with
``allow_pickle=False``; object arrays are refused both ways.

Big arrays take one pass each way: an array is hashed from its memory first and
not written at all when the store has its bytes (else written once, by temp
file and rename); a blob is read once, straight into the array it holds, and
checked against its name as it streams (the sha1 computed in a second thread
while the next piece is read). Neither keeps a second copy of the array. What
stays is sha1 itself, made once by the writer (naming the blob) and once by the
reader (checking it): about 0.57 s per GiB each on a core with SHA instructions,
more than ``np.save`` and ``np.load`` of that GiB from the page cache take
together (``bench/arrays.py`` prints both).

Standard library and numpy only: this module also runs inside job containers.
"""

from __future__ import annotations  # (np. annotations are not evaluated: see .lazy_numpy)

import hashlib
import io
import os
import queue
import threading
from typing import Any, Callable, Iterator, Optional

from .lazy_numpy import np

from . import files
from .files import CorruptFileError, makedirs, remove_quietly, temp_name, with_parents

_CHUNK = 1 << 20

#: Pieces in which big arrays are hashed, written and read (views of the array: never copied).
_BIG_CHUNK = 8 << 20

#: From this many bytes on, the sha1 of data being written or read is computed in a second
#: thread while the next piece is written or read (hashlib lets go of the GIL).
_THREADED = 32 << 20


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


class _Sha1:
    """sha1 of a stream of buffers; with ``threaded``, computed in a second thread while
    the caller writes or reads the next buffer. A buffer must not change after it is given."""

    def __init__(self, first: bytes = b"", threaded: bool = False):
        self._sha1 = hashlib.sha1(first)
        self._error: Optional[BaseException] = None
        self._queue: Optional["queue.Queue[Any]"] = None
        if threaded:
            self._queue = queue.Queue(2)
            self._thread = threading.Thread(target=self._run, name="hither-fs-sha1", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        get, update = self._queue.get, self._sha1.update
        while True:
            data = get()
            if data is None:
                return
            if self._error is None:
                try:
                    update(data)
                except BaseException as exc:  # pragma: no cover (kept for hexdigest; the queue still drains)
                    self._error = exc

    def update(self, data: Any) -> None:
        if self._queue is None:
            self._sha1.update(data)
        else:
            self._queue.put(data)

    def stop(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def hexdigest(self) -> str:
        self.stop()
        if self._error is not None:  # pragma: no cover
            raise self._error
        return self._sha1.hexdigest()


class _HeaderWritten(Exception):
    pass


class _HeaderSink:
    """Where ``np.save`` writes its header (its first write), then is stopped."""

    header = b""

    def write(self, data: Any) -> None:
        self.header = bytes(data)
        raise _HeaderWritten


def npy_header(array: np.ndarray) -> bytes:
    """The bytes ``np.save(f, array, allow_pickle=False)`` writes before the array's data
    (numpy's own header code, so blobs stay byte for byte what they always were)."""
    sink = _HeaderSink()
    try:
        np.save(sink, array, allow_pickle=False)  # type: ignore[arg-type]
    except _HeaderWritten:
        return sink.header
    raise AssertionError("np.save wrote no header")  # pragma: no cover (an array of nothing writes one)


def _memory(array: np.ndarray) -> Optional[memoryview]:
    """The bytes ``np.save`` writes after the header, as a view of the array's memory; None
    when they are not in memory in that order (a strided view)."""
    if array.nbytes == 0:
        return memoryview(b"")
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        flat = array.T.reshape(-1)
    elif array.flags.c_contiguous:
        flat = array.reshape(-1)
    else:
        return None
    return memoryview(flat.view(np.uint8))  # type: ignore[arg-type]


def npy_data(array: np.ndarray) -> Iterator[Any]:
    """The bytes ``np.save`` writes after the header, in pieces (views of the array's
    memory when it is contiguous, else copies of a few MiB at a time, as ``np.save`` makes for a stream)."""
    memory = _memory(array)
    if memory is not None:
        for start in range(0, len(memory), _BIG_CHUNK):
            yield memory[start:start + _BIG_CHUNK]
        return
    buffersize = max(_BIG_CHUNK // array.itemsize, 1)
    for chunk in np.nditer(array, flags=["external_loop", "buffered", "zerosize_ok"], buffersize=buffersize,
                           order="C"):
        yield chunk.tobytes("C")  # type: ignore[attr-defined]


def _read_exactly(f: Any, view: memoryview, path: str) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise CorruptFileError(path, "ends before the data its header announces")
        done += n


def _npy_prefix(f: Any, path: str) -> bytes:
    """Magic, version, header length and header of a ``.npy`` file (as in the file)."""
    start = bytearray(10)
    _read_exactly(f, memoryview(start)[:8], path)
    if start[:6] != b"\x93NUMPY" or start[6] not in (1, 2, 3):
        raise CorruptFileError(path, "is not a .npy file of a version numpy writes")
    width = 2 if start[6] == 1 else 4
    length = bytearray(width)
    _read_exactly(f, memoryview(length), path)
    size = int.from_bytes(bytes(length), "little")
    if size > 1 << 20:  # far above numpy's 10000 (checked below, as np.load does)
        raise CorruptFileError(path, "has a header of {} bytes".format(size))
    header = bytearray(size)
    _read_exactly(f, memoryview(header), path)
    return bytes(start[:8]) + bytes(length) + bytes(header)


class _NotStreamable(Exception):
    """A ``.npy`` header of a version whose parser numpy does not make public (3.0: utf-8
    field names): such a blob is checked, then loaded by ``np.load``."""


def _parse_npy_prefix(prefix: bytes) -> Any:
    """(shape, fortran_order, dtype) from a ``.npy`` prefix, by numpy's own code (which refuses
    headers of more than 10000 bytes, as ``np.load(allow_pickle=False)`` does)."""
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise _NotStreamable


def read_npy(f: Any, path: str, sha1: str) -> np.ndarray:
    """Read an open ``.npy`` blob once, straight into the array it holds, checking the
    bytes against ``sha1`` as they stream (the only copy in memory is the array)."""
    prefix = _npy_prefix(f, path)
    try:
        shape, fortran_order, dtype = _parse_npy_prefix(prefix)
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    except (ValueError, SyntaxError, TypeError) as exc:
        # np.load raises ValueError for object arrays when pickles are refused
        raise CorruptFileError(path, "refused to load: {}".format(exc)) from None
    try:
        size = os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):  # pragma: no cover
        size = None
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if size is not None and size < len(prefix) + nbytes:
        raise CorruptFileError(path, "is {} bytes, less than the {} its header announces".format(
            size, len(prefix) + nbytes))
    array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
    h = _Sha1(prefix, threaded=nbytes >= _THREADED)
    try:
        memory = _memory(array)
        assert memory is not None and len(memory) == nbytes
        for start in range(0, nbytes, _BIG_CHUNK):
            piece = memory[start:start + _BIG_CHUNK]
            _read_exactly(f, piece, path)
            h.update(piece)
        rest = bytearray(_CHUNK)
        while True:  # whatever follows the data counts too (np.save writes nothing there)
            n = f.readinto(rest)
            if not n:
                break
            h.update(bytes(rest[:n]))
        actual = h.hexdigest()
    finally:
        h.stop()
    if actual != sha1:
        raise CorruptFileError(path, "content hash is {}, expected {}".format(actual, sha1))
    return array


class Store:
    def __init__(self, path: str):
        self.path = path

    def blob_path(self, sha1: str, ext: str = "") -> str:
        if len(sha1) != 40 or any(c not in "0123456789abcdef" for c in sha1):
            raise ValueError("not a sha1: {!r}".format(sha1))
        if ext not in ("", ".npy"):
            raise ValueError("bad blob extension {!r}".format(ext))
        return os.path.join(self.path, sha1[:2], sha1 + ext)

    def _write_via_temp(self, fill: Callable[[Callable[[Any], None]], None], ext: str,
                        first: bytes = b"", threaded: bool = False, sha1: Optional[str] = None) -> str:
        """Write a blob into a temp file, hashing its bytes as they are written (unless their
        ``sha1`` is known), and rename it to its content address (over an existing copy: the
        same bytes, or a damaged copy that this one repairs). ``first`` opens the bytes,
        ``fill(write)`` gives the rest."""
        tmp = temp_name(os.path.join(self.path, "incoming"))
        mode = files.file_mode(self.path)
        h = _Sha1(threaded=threaded and sha1 is None)
        try:
            fd = with_parents(lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode),
                              self.path)
            with os.fdopen(fd, "wb", buffering=0) as f:
                if mode & 0o070:
                    os.fchmod(f.fileno(), mode)

                def write(data: Any) -> None:
                    view = memoryview(data)
                    if sha1 is None:
                        h.update(view)
                    while len(view):
                        n = f.write(view)
                        if not n:  # pragma: no cover (a regular file takes all or raises)
                            raise OSError(0, "short write")
                        view = view[n:]

                if first:
                    write(first)
                fill(write)
                if files.FSYNC:
                    os.fsync(f.fileno())
            name = h.hexdigest() if sha1 is None else sha1
            final = self.blob_path(name, ext)
            with_parents(lambda: os.replace(tmp, final), os.path.dirname(final))
            return name
        except OSError as exc:
            h.stop()
            remove_quietly(tmp)
            raise OSError(exc.errno, "cannot write into the store at {}: {} (is the disk full, or a "
                          "file size limit in force?)".format(self.path, exc.strerror or exc)) from exc
        except BaseException:
            h.stop()
            remove_quietly(tmp)
            raise

    def _present(self, sha1: str, ext: str, size: int) -> bool:
        """Whether a blob of this name and size is here already (then marked as just stored,
        for ``hither-fs gc``); its bytes are checked when it is read."""
        path = self.blob_path(sha1, ext)
        try:
            st = os.lstat(path)
            if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == size):
                return False  # damaged or a stranger: written again
            os.utime(path)
            return True
        except OSError:  # missing, or not ours to touch: written again
            return False

    def put_array(self, array: np.ndarray, skip_if_present: bool = True) -> str:
        """Store an array as the ``.npy`` file ``np.save(allow_pickle=False)`` writes; its name is
        the sha1 of that file. The bytes are hashed first, from the array's memory, and not
        written at all when the store has them; else written once, never copied whole. (An
        array that another thread changes meanwhile may leave a blob whose bytes do not match
        its name: every read checks, and refuses it.)

        ``skip_if_present=False`` (a job's result, new bytes as a rule): one pass, the bytes
        hashed in a second thread while they are written (a copy already there is replaced)."""
        if array.dtype.hasobject:
            raise TypeError("object arrays are not allowed (dtype {})".format(array.dtype))
        header = npy_header(array)

        def fill(write: Callable[[Any], None]) -> None:
            for piece in npy_data(array):
                write(piece)
        if not skip_if_present:
            return self._write_via_temp(fill, ".npy", first=header, threaded=array.nbytes >= _THREADED)
        size = len(header) + array.nbytes
        h = hashlib.sha1(header)
        for piece in npy_data(array):
            h.update(piece)
        sha1 = h.hexdigest()
        if self._present(sha1, ".npy", size):
            return sha1
        return self._write_via_temp(fill, ".npy", first=header, sha1=sha1)

    def put_bytes(self, data: bytes) -> str:
        sha1 = hashlib.sha1(data).hexdigest()
        if self._present(sha1, "", len(data)):
            return sha1
        return self._write_via_temp(lambda write: write(data), "", sha1=sha1)

    def put_file(self, path: str) -> str:
        def copy(write: Callable[[Any], None]) -> None:
            with open(path, "rb", buffering=0) as src:
                while True:
                    piece = src.read(_BIG_CHUNK)
                    if not piece:
                        return
                    write(piece)
        return self._write_via_temp(copy, "", threaded=os.path.getsize(path) >= _THREADED)

    def has(self, sha1: str, ext: str = "") -> bool:
        return os.path.exists(self.blob_path(sha1, ext))

    def refresh(self, sha1: str, ext: str = "") -> bool:
        """Mark a blob as just stored (its mtime, which ``hither-fs gc`` respects), when it
        is used again without being written again. False if it is not there."""
        path = self.blob_path(sha1, ext)
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False
        except PermissionError:  # another user's, in a shared store: usable as it is if readable
            return os.access(path, os.R_OK)

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
        """An array, read once from its blob and checked against its name as it streams."""
        path = self.blob_path(sha1, ".npy")
        try:
            fd = files.open_regular(path)
        except FileNotFoundError:
            raise BlobMissingError("blob {} is missing from the store at {}".format(sha1, path)) from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                except OSError:  # pragma: no cover
                    pass
            try:
                return read_npy(f, path, sha1)
            except _NotStreamable:
                pass
        return self._get_array_in_two_passes(sha1)

    def _get_array_in_two_passes(self, sha1: str) -> np.ndarray:
        """Check the blob, then load it with ``np.load`` (a header of version 3.0)."""
        path = self.verified_path(sha1, ".npy")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            # np.load raises ValueError for object arrays when pickles are refused
            raise CorruptFileError(path, "refused to load: {}".format(exc)) from None

    def copy_blob_from(self, other: "Store", sha1: str, ext: str = "") -> None:
        """Make a blob of ``other`` present here: by hard link, unless this store is group-shared
        and the file has not the mode and group a new file here gets (a private root's blob
        linked into a lab's store would stay unreadable to the others): then copied with those."""
        if self.refresh(sha1, ext):
            return
        src = other.verified_path(sha1, ext)
        dst = self.blob_path(sha1, ext)
        directory = os.path.dirname(dst)
        makedirs(directory)
        tmp = temp_name(dst)
        try:
            try:
                if files.group_shared(directory):
                    st, here = os.stat(src), os.stat(directory)
                    if st.st_mode & 0o777 != files.file_mode(directory) or st.st_gid != here.st_gid:
                        raise PermissionError("not shareable as it is")
                os.link(src, tmp)
                os.utime(tmp)  # a link shares the source's old mtime: young here, to hither-fs gc
            except OSError:
                remove_quietly(tmp)
                files.copy_new(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            remove_quietly(tmp)
            raise

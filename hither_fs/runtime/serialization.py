"""Turning argument and result values into JSON plus store blobs, and back.

Allowed values: ``None``, ``bool``, ``int``, ``float``, ``str``, numpy
arrays (any dtype of numpy's own but object and ``StringDType``, any shape,
byte order and memory order), numpy scalars, lists, tuples (they stay
tuples), dicts with string keys, :class:`File`, all nested at most
:data:`MAX_DEPTH` levels deep; on the submitting side also ``Job`` objects
(pipelines). What comes back is what went in: the same type, dtype (units,
byte lengths, precision, byte order, fields) and bits. Of numpy's array
subclasses ``np.recarray`` and ``np.matrix`` come back as themselves and
``np.memmap`` as a plain ``ndarray`` (its bytes travel, not the mapping);
masked arrays and other subclasses are refused. Anything else raises
``TypeError`` naming where it sits, for example ``argument 'x'[2]['w']: set
is not allowed``; too deep a value raises ``ValueError``.

Values that JSON cannot express are tagged with a ``"__hither__"`` key::

    {"__hither__": "ndarray", "sha1": "...", "dtype": "float64", "shape": [4, 3]}
    {"__hither__": "ndarray", ..., "type": "recarray"}     (or "matrix")
    {"__hither__": "tuple", "items": [...]}
    {"__hither__": "scalar", "dtype": "int64", "value": 14}
    {"__hither__": "scalar", "dtype": "timedelta64[ns]", "value": 5}   (the count; null for NaT)
    {"__hither__": "scalar", "dtype": "|S3", "sha1": "..."}   (a 0-d array in the store)
    {"__hither__": "scalar", ..., "type": "record"}      (a np.record, scalar of a recarray)
    {"__hither__": "file", "sha1": "...", "name": "data.bin"}
    {"__hither__": "job", "id": "3f9a..."}
    {"__hither__": "dict", "items": {...}}   (a user dict that has the key "__hither__")

A scalar is written as a JSON number only when that number reads back to
the same bits (bools, integers, float16/32/64 but a NaN of other bits than
numpy's own); longdouble, complex, datetime, string and void scalars and
such NaNs go to the store. Records written before ``"type"`` existed read
as before.

Standard library and numpy only (numpy 1.24 and later): this module also
runs inside job containers.
"""

from __future__ import annotations  # (np. annotations are not evaluated: see .lazy_numpy)

import contextlib
import functools
import os
import sys
from typing import Any, Callable, Iterator, Optional, Tuple, Union

from .lazy_numpy import np

from .store import BlobMissingError, Store, sha1_of_file

TAG = "__hither__"

#: How deep lists, tuples and dicts may nest in one argument or result. Encoding, JSON and
#: decoding recurse up to twice per level, so 100 levels take about 250 frames of the
#: default recursion limit of 1000 (the cache key does not recurse: see ``cache_key``).
MAX_DEPTH = 100


# -- where hi.File stores its bytes ----------------------------------------------------

_job_store: Optional[Store] = None
_default_store: Optional[Callable[[], Optional[Store]]] = None


def set_default_store(find: Optional[Callable[[], Optional[Store]]]) -> None:
    """Where a ``hi.File`` made outside a job stores its bytes: the full hither_fs sets this to
    the store of ``hi.Config``'s root (the container stand-in leaves it unset)."""
    global _default_store
    _default_store = find


@contextlib.contextmanager
def files_stored_in(store: Store) -> Iterator[None]:
    """While a job's function runs, every ``hi.File`` it makes stores its bytes in the job's
    root (in whichever thread it is made: the setting is process-wide)."""
    global _job_store
    before, _job_store = _job_store, store
    try:
        yield
    finally:
        _job_store = before


def _current_store() -> Optional[Store]:
    if _job_store is not None:
        return _job_store
    return _default_store() if _default_store is not None else None


class File:
    """A file that travels with a job: stored by content in the root's store.

    ``hi.File(path)`` copies the file's bytes into the store of the root in
    use (``hi.Config``'s root; inside a job, the job's root) at once, so the
    original may change or vanish right after: passing the ``File`` to
    ``.run()``, returning it from a job and reading it all use the stored
    copy. ``.path`` is where that copy can be read (do not write to it),
    ``.name`` the original file name, ``.sha1`` the content hash.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, sha1: Optional[str] = None,
                 name: Optional[str] = None):
        path = os.path.abspath(os.fspath(path))
        self.name = name or os.path.basename(path)
        self._store: Optional[Store] = None
        self._sha1: Optional[str] = None
        self._source: Optional[str] = None  # the original file, for a File that could not be stored yet
        if sha1 is not None:  # a stored copy that is known already
            self.path, self._sha1 = path, sha1
            return
        if not os.path.exists(path):
            raise FileNotFoundError("hi.File: {} does not exist".format(path))
        if not os.path.isfile(path):
            raise IsADirectoryError("hi.File: {} is not a regular file".format(path)) if os.path.isdir(path) \
                else ValueError("hi.File: {} is not a regular file".format(path))
        store = _current_store()
        if store is None:  # no root here (a container outside a job): stored when it is first given to a job
            self.path, self._sha1, self._source = path, None, path
            return
        self._sha1 = store.put_file(path)
        self._store, self._source = store, path
        self.path = store.blob_path(self._sha1)

    @classmethod
    def _stored(cls, store: Store, sha1: str, name: Optional[str]) -> "File":
        """A ``File`` for a blob already in ``store`` (checked against its hash now)."""
        f = cls(store.verified_path(sha1), sha1=sha1, name=name)
        f._store = store
        return f

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = sha1_of_file(self.path)
        return self._sha1

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def _store_in(self, store: Store, where: str) -> str:
        """Make the bytes present in ``store`` (linked or copied from where they are now)."""
        if self._store is None:
            if not os.path.isfile(self.path):
                raise FileNotFoundError("{}: file {} does not exist".format(where, self.path))
            self._sha1 = store.put_file(self.path)
            self._store, self.path = store, store.blob_path(self._sha1)
            return self._sha1
        sha1 = self.sha1  # known: a stored File has its sha1
        try:
            if os.path.abspath(self._store.path) == os.path.abspath(store.path):
                if store.refresh(sha1):
                    return sha1
                raise BlobMissingError(sha1)
            store.copy_blob_from(self._store, sha1)
            return sha1
        except BlobMissingError:
            pass
        # the stored copy is gone (hither-fs gc removes blobs no job refers to after its grace
        # period): the original file will do if it still holds the same bytes
        if self._source is not None and os.path.isfile(self._source) and sha1_of_file(self._source) == sha1:
            store.put_file(self._source)
            return sha1
        raise FileNotFoundError(
            "{}: the bytes of hi.File {!r} (sha1 {}) are no longer in the store at {} (removed by hither-fs "
            "gc?) and its original file {} is gone or changed: make the hi.File again".format(
                where, self.name, sha1, self._store.path, self._source or "(unknown)"))

    def __eq__(self, other):
        return isinstance(other, File) and other.sha1 == self.sha1

    def __hash__(self):
        return hash(self.sha1)

    def __repr__(self):
        return "File({!r}, sha1={})".format(self.name, self._sha1 or "?")


def _where_item(where: str, key: Any) -> str:
    return "{}[{!r}]".format(where, key)


# -- numpy -------------------------------------------------------------------------------

_NUMPY_KINDS = "biufcmMSUV"


def _foreign_dtype(dtype: np.dtype) -> bool:
    """Whether a dtype (or one of its fields) is not one of numpy's own, which ``.npy``
    files hold without pickling (a user-defined dtype, ``StringDType``)."""
    if dtype.fields is not None:
        return any(_foreign_dtype(field[0]) for field in dtype.fields.values())
    if dtype.subdtype is not None:
        return _foreign_dtype(dtype.subdtype[0])
    return dtype.kind not in _NUMPY_KINDS or getattr(dtype.type, "__module__", None) != "numpy"


def _check_dtype(dtype: np.dtype, where: str, what: str) -> None:
    if dtype.kind == "T" or type(dtype).__name__ == "StringDType":
        raise TypeError("{}: numpy StringDType {} are not allowed: pass x.astype('U') (fixed-width "
                        "strings)".format(where, what))
    if dtype.hasobject:
        raise TypeError("{}: object {} are not allowed (dtype {})".format(where, what, dtype))
    if _foreign_dtype(dtype):
        raise TypeError("{}: dtype {} is not one of numpy's own dtypes, which are the only ones allowed in "
                        "{}".format(where, dtype, what))


def _array_type(value: np.ndarray, where: str) -> Optional[str]:
    """The ``"type"`` of an array's tag (None for a plain ndarray); refuses masked arrays and
    subclasses that would come back as something else."""
    cls = type(value)
    if cls is np.ndarray or cls is np.memmap:
        return None  # a memmap travels as its bytes: a plain ndarray on the other side
    if cls is np.recarray or cls is np.matrix:  # subclasses that travel as themselves
        return cls.__name__
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError("{}: np.ma.MaskedArray is not allowed (it would lose its mask): pass its data and mask "
                        "as two arrays, np.ma.getdata(x) and np.ma.getmaskarray(x), or x.filled(value)"
                        .format(where))
    raise TypeError("{}: {}.{} (a subclass of numpy.ndarray) is not allowed: pass np.asarray(x)".format(
        where, cls.__module__, cls.__qualname__))


def _json_number(value: np.generic) -> Any:
    """A bool, integer or float scalar as a JSON value that reads back to the same bits, else
    ``NotImplemented`` (a longdouble; a NaN of other bits than the one JSON's NaN reads as)."""
    kind = value.dtype.kind
    if kind in "biu":
        return value.item()
    if kind == "m":  # a count of units (timedelta64 is an integer type; .item() may give a timedelta)
        count = int(np.asarray(value).view(np.int64)[()])
        return None if count == np.iinfo(np.int64).min else count
    if kind == "f":
        number = value.item()
        if type(number) is not float:
            return NotImplemented  # longdouble
        if number != number and value.dtype.type(float("nan")).tobytes() != value.tobytes():
            return NotImplemented  # a NaN with a sign or payload JSON cannot spell
        return number
    return NotImplemented


def _scalar_from_json(dtype: np.dtype, value: Any) -> Any:
    if dtype.kind in "mM":
        count = np.iinfo(np.int64).min if value is None else value
        return np.array(count, dtype=np.int64).view(dtype)[()]
    return dtype.type(value)


def _scalar_from_array(array: np.ndarray, dtype_text: Any) -> Any:
    """The scalar a 0-d array holds, with its recorded dtype: numpy drops trailing NULs of
    bytes and str scalars (``|S3`` ``b'ab\\0'`` would come back ``|S2``), so those are rebuilt
    from the array's raw bytes, cut to the recorded length."""
    kind = array.dtype.kind
    if kind not in "SU":
        return array[()]
    try:
        itemsize = np.dtype(dtype_text).itemsize if np.dtype(dtype_text).kind == kind else array.dtype.itemsize
    except TypeError:
        itemsize = array.dtype.itemsize
    if kind == "S":
        return np.bytes_(array.tobytes()[:itemsize])
    native = array.astype(array.dtype.newbyteorder("="))
    text = native.tobytes()[:itemsize].decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be",
                                               "surrogatepass")
    return np.str_(text)


#: x87 extended precision (x86's longdouble) keeps 10 bytes of a 12- or 16-byte item; the rest
#: is padding that numpy leaves uninitialised, which would make equal values differ in the store
#: (and in cache keys).
@functools.lru_cache(maxsize=None)
def _x87_padded() -> bool:
    return bool(np.finfo(np.longdouble).nmant == 63 and np.dtype(np.longdouble).itemsize > 10)


def _without_padding(array: np.ndarray) -> np.ndarray:
    """``array``, or a copy whose longdouble/clongdouble padding bytes are zero (same values)."""
    dtype = array.dtype
    if not _x87_padded() or dtype.kind not in "fc" or dtype.type not in (np.longdouble, np.clongdouble) \
            or not dtype.isnative or array.size == 0:
        return array
    order: Any = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    copy = array.copy(order=order)
    part = np.dtype(np.longdouble).itemsize
    flat = copy.reshape(-1, order=order).view(np.uint8).reshape(-1, part)  # views of the copy
    if sys.byteorder == "little":
        flat[:, 10:] = 0
    else:
        flat[:, :part - 10] = 0
    return copy


# -- encoding and decoding -----------------------------------------------------------------

#: Ints this many bits long or shorter have at most 4,300 digits, Python's own limit on turning
#: an int into text (``sys.set_int_max_str_digits``): checked only beyond it.
_INT_BITS_LIMIT = 14000


def _check_int_digits(value: int, where: str) -> None:
    """Refuse an int that Python will not write as text (JSON), naming where it is."""
    try:
        str(value)  # Python's own check (the limit may be raised, or off), as JSON will meet it
    except ValueError:
        raise ValueError("{}: an int of {} bits has more digits than Python writes as text "
                         "(sys.get_int_max_str_digits()): pass it as a str".format(where, value.bit_length())) from None


def _too_deep(where: str) -> ValueError:
    return ValueError("{}: nested deeper than {} levels of lists, tuples and dicts (or it contains itself); "
                      "pass deep data as a numpy array or a hi.File".format(where, MAX_DEPTH))


def encode(value: Any, store: Store, where: str, other: Optional[Callable[[Any, str], Any]] = None,
           result: bool = False) -> Any:
    """Encode ``value`` as JSON, writing arrays and files into ``store``.

    ``other(value, where)`` may encode extra types (the submitting side uses it
    for ``Job`` objects); it returns ``NotImplemented`` to refuse a value.
    A value nested deeper than :data:`MAX_DEPTH` raises ``ValueError`` naming ``where``.
    ``result``: a job's result, whose arrays (new bytes as a rule) are hashed as they are written;
    an argument's are hashed first and not written again when the store has them.
    """
    return _encode(value, store, where, other, 0, where, result)


def _encode(value: Any, store: Store, where: str, other: Optional[Callable[[Any, str], Any]],
            depth: int, top: str, result: bool) -> Any:
    if value is None or (isinstance(value, (bool, str, int, float)) and not isinstance(value, np.generic)):
        if type(value) is int and value.bit_length() > _INT_BITS_LIMIT:
            _check_int_digits(value, where)
        return value
    if isinstance(value, np.ndarray):
        kind = _array_type(value, where)
        _check_dtype(value.dtype, where, "arrays")
        sha1 = store.put_array(_without_padding(value.view(np.ndarray)), skip_if_present=not result)
        tag = {TAG: "ndarray", "sha1": sha1, "dtype": str(value.dtype), "shape": list(value.shape)}
        if kind is not None:
            tag["type"] = kind
        return tag
    if isinstance(value, np.generic):
        cls = value.dtype.type
        if type(value) is not cls:
            raise TypeError("{}: {}.{} (a subclass of numpy.{}) is not allowed: pass numpy.{}(x)".format(
                where, type(value).__module__, type(value).__qualname__, cls.__name__, cls.__name__))
        _check_dtype(value.dtype, where, "scalars")
        number = _json_number(value)
        if number is not NotImplemented:
            return {TAG: "scalar", "dtype": str(value.dtype), "value": number}
        tag = {TAG: "scalar", "dtype": str(value.dtype), "sha1": store.put_array(_without_padding(np.asarray(value)))}
        if cls is np.record:
            tag["type"] = "record"
        return tag
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise _too_deep(top)
    if isinstance(value, list):
        return [_encode(v, store, _where_item(where, i), other, depth + 1, top, result) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [_encode(v, store, _where_item(where, i), other, depth + 1, top, result)
                                        for i, v in enumerate(value)]}
    if isinstance(value, dict):
        items = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("{}: dict key {!r} is a {}, only str keys are allowed".format(
                    where, k, type(k).__name__))
            items[k] = _encode(v, store, _where_item(where, k), other, depth + 1, top, result)
        return {TAG: "dict", "items": items} if TAG in items else items
    if isinstance(value, File):
        return {TAG: "file", "sha1": value._store_in(store, where), "name": value.name}
    if other is not None:
        encoded = other(value, where)
        if encoded is not NotImplemented:
            return encoded
    raise TypeError("{}: {} is not allowed".format(where, type(value).__name__))


def decode(obj: Any, store: Store, job_value: Optional[Callable[[str], Any]] = None) -> Any:
    """Inverse of :func:`encode`. ``job_value(id)`` resolves upstream job results.

    A record nested deeper than :func:`encode` writes (a damaged or hand-edited one) raises
    ``ValueError``, not ``RecursionError``."""
    return _decode(obj, store, job_value, 0)


def _decode(obj: Any, store: Store, job_value: Optional[Callable[[str], Any]], depth: int) -> Any:
    if isinstance(obj, (list, dict)) and depth > MAX_DEPTH:
        raise ValueError("an encoded value is nested deeper than {} levels, more than hither_fs writes: the "
                         "record is damaged or was edited by hand".format(MAX_DEPTH))
    if isinstance(obj, list):
        return [_decode(v, store, job_value, depth + 1) for v in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(TAG)
    if kind is None:
        return {k: _decode(v, store, job_value, depth + 1) for k, v in obj.items()}
    if kind == "ndarray":
        array = store.get_array(obj["sha1"])
        view = obj.get("type")
        if view is None:
            return array
        if view == "recarray":
            return array.view(np.recarray)
        if view == "matrix":
            return array.view(np.matrix)  # a view: no np.matrix() call, so no PendingDeprecationWarning
        raise ValueError("unknown array type {!r}".format(view))
    if kind == "scalar":
        if "sha1" in obj:
            array = store.get_array(obj["sha1"])
            if obj.get("type") == "record":
                return array.view(np.recarray)[()]
            return _scalar_from_array(array, obj.get("dtype"))
        return _scalar_from_json(np.dtype(obj["dtype"]), obj["value"])
    if kind == "tuple":
        return tuple(_decode(v, store, job_value, depth + 1) for v in obj["items"])
    if kind == "dict":
        return {k: _decode(v, store, job_value, depth + 1) for k, v in obj["items"].items()}
    if kind == "file":
        return File._stored(store, obj["sha1"], obj.get("name"))
    if kind == "job":
        if job_value is None:
            raise ValueError("a job reference cannot be decoded here")
        return job_value(obj["id"])
    raise ValueError("unknown value tag {!r}".format(kind))


def blob_refs(value: Any) -> Iterator[Tuple[str, str]]:
    """``(sha1, ext)`` of every store blob an encoded value refers to (``.npy`` for arrays and
    scalars, ``''`` for files)."""
    for ref in walk_refs(value):
        if "sha1" in ref:
            yield ref["sha1"], "" if ref[TAG] == "file" else ".npy"


def walk_refs(obj: Any) -> Iterator[Any]:
    """Yield every tagged reference (arrays, files, jobs) inside an encoded value, in order.

    Iterative, so that a record of any depth (a damaged one too) cannot exhaust the stack of
    ``hither-fs gc``, ``du`` or ``fsck``."""
    stack = [obj]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(reversed(obj))
        elif isinstance(obj, dict):
            kind = obj.get(TAG)
            if kind in ("ndarray", "file", "job") or (kind == "scalar" and "sha1" in obj):
                yield obj
            elif kind == "tuple":
                stack.append(obj["items"])
            elif kind == "dict":
                stack.append(list(obj["items"].values()))
            else:
                stack.extend(reversed(list(obj.values())))

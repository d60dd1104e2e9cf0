"""Big arrays in one pass: the store hashes an array before writing it (and writes nothing
when it has the bytes), reads a blob once straight into the array while checking its hash,
and keeps the bytes of its blobs exactly what ``np.save`` writes."""

import hashlib
import io
import os
import tracemalloc

import numpy as np
import pytest

from hither_fs.runtime import store as store_module
from hither_fs.runtime.files import CorruptFileError
from hither_fs.runtime.store import BlobMissingError, Store

ARRAYS = {
    'c': np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    'fortran': np.asfortranarray(np.random.default_rng(0).random((3, 5))),
    'strided': np.arange(100.0).reshape(10, 10)[::2, 1::3],
    'transposed-3d': np.arange(60).reshape(3, 4, 5).transpose(1, 0, 2),
    '0-d': np.array(3.5),
    'empty': np.zeros((0, 2)),
    'empty-fortran': np.asfortranarray(np.zeros((2, 0, 3))),
    'structured': np.array([(1, 2.0, b'ab'), (3, 4.0, b'c')], dtype=[('i', '>i4'), ('f', '<f8'), ('s', 'S2')]),
    'big-endian': np.arange(7, dtype='>f4'),
    'unicode': np.array(['a', 'bcd', '']),
    'datetime': np.array(['2020-01-01', 'NaT'], dtype='M8[D]'),
    'complex': np.array([1 + 2j, -0.0j]),
    'bool': np.array([[True, False]]),
    'void0': np.zeros(3, dtype='V0') if np.dtype('V0').itemsize == 0 else np.zeros(3, dtype='V1'),
    'latin-1-field-name': np.zeros(2, dtype=[('\u00e9t\u00e9', 'u1')]),
    'utf-8-field-name (npy 3.0, read by np.load)': np.array([(1,), (2,)], dtype=[('\u4e2d', '<i2')]),
}


def saved(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(params=[False, True], ids=['inline', 'threaded'])
def store(request, tmp_path, monkeypatch):
    if request.param:  # the threaded hashing of big arrays, on small ones
        monkeypatch.setattr(store_module, '_THREADED', 1)
        monkeypatch.setattr(store_module, '_BIG_CHUNK', 8)
    return Store(str(tmp_path / 'store'))


@pytest.mark.filterwarnings('ignore:Stored array in format 3.0')
@pytest.mark.parametrize('name', sorted(ARRAYS))
def test_blobs_are_what_np_save_writes_and_read_back_as_np_load_does(store, name):
    array = ARRAYS[name]
    sha1 = store.put_array(array)
    path = store.blob_path(sha1, '.npy')
    with open(path, 'rb') as f:
        data = f.read()
    assert data == saved(array)  # same bytes and names as ever: existing roots stay readable
    assert sha1 == hashlib.sha1(data).hexdigest()
    back = store.get_array(sha1)
    expected = np.load(path, allow_pickle=False)
    assert back.dtype == expected.dtype and back.shape == expected.shape
    assert back.tobytes() == expected.tobytes()
    assert back.flags.c_contiguous == expected.flags.c_contiguous
    assert back.flags.f_contiguous == expected.flags.f_contiguous
    assert back.flags.writeable
    incoming = os.path.join(store.path, 'incoming')
    assert not os.path.isdir(incoming) or not os.listdir(incoming)  # no temp file left


def test_the_same_array_is_written_once(store, monkeypatch):
    array = np.arange(1000.0)
    sha1 = store.put_array(array)
    path = store.blob_path(sha1, '.npy')
    os.utime(path, (1000, 1000))
    inode = os.stat(path).st_ino

    def no_write(*args, **kwargs):
        raise AssertionError('written again')
    monkeypatch.setattr(Store, '_write_via_temp', no_write)
    for _ in range(10):
        assert store.put_array(array.copy()) == sha1
    st = os.stat(path)
    assert st.st_ino == inode  # not replaced
    assert st.st_mtime > 1000  # but marked as just stored, for hither-fs gc


def test_a_damaged_copy_of_another_size_is_written_again(store):
    array = np.arange(100)
    sha1 = store.put_array(array)
    path = store.blob_path(sha1, '.npy')
    with open(path, 'r+b') as f:
        f.truncate(50)
    assert store.put_array(array) == sha1
    assert np.array_equal(store.get_array(sha1), array)


def test_bytes_and_files_are_hashed_as_they_are_written(store, tmp_path):
    sha1 = store.put_bytes(b'hello')
    assert sha1 == hashlib.sha1(b'hello').hexdigest() and store.get_bytes(sha1) == b'hello'
    assert store.put_bytes(b'hello') == sha1
    src = tmp_path / 'f.bin'
    src.write_bytes(os.urandom(100000))
    sha1 = store.put_file(str(src))
    assert sha1 == hashlib.sha1(src.read_bytes()).hexdigest()
    assert open(store.blob_path(sha1), 'rb').read() == src.read_bytes()


def corrupt(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_a_corrupted_blob_is_detected_while_streaming(store):
    array = np.arange(100000, dtype=np.int64)
    sha1 = store.put_array(array)
    path = store.blob_path(sha1, '.npy')
    corrupt(path, os.path.getsize(path) - 3)  # in the data
    with pytest.raises(CorruptFileError, match='content hash is'):
        store.get_array(sha1)


def test_a_truncated_or_lengthened_blob_is_detected(store):
    sha1 = store.put_array(np.arange(1000))
    path = store.blob_path(sha1, '.npy')
    with open(path, 'ab') as f:
        f.write(b'more')
    with pytest.raises(CorruptFileError, match='content hash is'):
        store.get_array(sha1)
    with open(path, 'r+b') as f:
        f.truncate(200)
    with pytest.raises(CorruptFileError, match='less than'):
        store.get_array(sha1)
    with open(path, 'r+b') as f:
        f.truncate(5)
    with pytest.raises(CorruptFileError):
        store.get_array(sha1)
    with open(path, 'wb') as f:
        f.write(b'not a npy file at all')
    with pytest.raises(CorruptFileError, match='not a .npy'):
        store.get_array(sha1)


def test_a_damaged_header_and_a_missing_blob(store):
    sha1 = store.put_array(np.arange(10))
    path = store.blob_path(sha1, '.npy')
    data = bytearray(open(path, 'rb').read())
    data[data.index(b'descr')] = ord('x')
    open(path, 'wb').write(bytes(data))
    with pytest.raises(CorruptFileError):
        store.get_array(sha1)
    with pytest.raises(BlobMissingError):
        store.get_array('0' * 40)


def test_object_arrays_are_refused_both_ways(store):
    with pytest.raises(TypeError):
        store.put_array(np.array([{}, 1], dtype=object))
    buf = io.BytesIO()
    np.save(buf, np.array([{}, 1], dtype=object), allow_pickle=True)
    sha1 = store.put_bytes(buf.getvalue())
    os.rename(store.blob_path(sha1), store.blob_path(sha1, '.npy'))
    with pytest.raises(CorruptFileError, match='refused to load'):
        store.get_array(sha1)


def test_reading_and_writing_keep_one_copy_in_memory(tmp_path):
    store = Store(str(tmp_path / 'store'))
    array = np.ones(64 << 17)  # 64 MiB
    tracemalloc.start()
    try:
        sha1 = store.put_array(array)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        os.utime(store.blob_path(sha1, '.npy'))
        store.put_array(array)  # present already: hashed only
        _, again_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        back = store.get_array(sha1)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(back, array)
    assert write_peak < 0.2 * array.nbytes, write_peak
    assert again_peak < 0.2 * array.nbytes, again_peak
    assert read_peak - before < 1.2 * array.nbytes, read_peak - before


def test_a_strided_array_is_not_copied_whole(tmp_path):
    store = Store(str(tmp_path / 'store'))
    array = np.ones((2 << 20, 8))[:, ::2]  # 64 MiB of data, not contiguous
    tracemalloc.start()
    try:
        sha1 = store.put_array(array)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.7 * array.nbytes, peak
    assert np.array_equal(store.get_array(sha1), array)


def test_a_result_is_hashed_as_it_is_written_an_argument_before(store):
    from hither_fs.runtime.serialization import encode
    array = np.arange(5000.0)
    tag = encode(array, store, "argument 'x'")
    path = store.blob_path(tag['sha1'], '.npy')
    inode = os.stat(path).st_ino
    assert encode(array, store, "argument 'y'") == tag and os.stat(path).st_ino == inode  # not written again
    assert encode(array, store, 'result of f', result=True) == tag  # the same name, from the bytes as written
    assert os.stat(path).st_ino != inode  # written in one pass (replacing the same bytes)
    assert store.put_array(array, skip_if_present=False) == tag['sha1']
    assert np.array_equal(store.get_array(tag['sha1']), array)
    with open(path, 'rb') as f:
        assert f.read() == saved(array)


def test_each_way_hashes_the_bytes_once(store, monkeypatch):
    """What is left of the cost of a big array is sha1 itself: the writer hashes the bytes once
    (naming the blob), the reader once (checking it), never twice."""
    hashed = []
    real = hashlib.sha1

    class Counting:
        def __init__(self, data=b''):
            self._sha1 = real()
            self.update(data)

        def update(self, data):
            hashed.append(memoryview(data).nbytes)
            self._sha1.update(data)

        def hexdigest(self):
            return self._sha1.hexdigest()

    array = np.arange(30000.0).reshape(100, 300)
    size = len(saved(array))
    monkeypatch.setattr(store_module.hashlib, 'sha1', Counting)
    sha1 = store.put_array(array, skip_if_present=False)  # a result: hashed as it is written
    assert sum(hashed) == size
    hashed.clear()
    assert np.array_equal(store.get_array(sha1), array)  # checked as it is read
    assert sum(hashed) == size
    os.unlink(store.blob_path(sha1, '.npy'))
    hashed.clear()
    assert store.put_array(array) == sha1  # an argument: hashed first, then written without hashing again
    assert sum(hashed) == size
    hashed.clear()
    assert store.put_array(array) == sha1  # present: hashed only
    assert sum(hashed) == size

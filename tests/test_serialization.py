"""Argument and result types: what travels, what is refused, how the store keeps it."""

import glob
import io
import os

import numpy as np
import pytest

import hither_fs as hi
from hither_fs.runtime.files import CorruptFileError
from jobfuncs import echo, make_file, read_file


VALUES = [
    None, True, 3, -2.5, 'text', [1, [2, 3]], (1, (2, 'x')), {'a': {'b': (1, 2)}},
    {'__hither__': 'a user key'}, np.int64(14), np.float32(1.5), np.bool_(True), np.complex128(1 + 2j),
    np.arange(12, dtype=np.int16).reshape(3, 4), np.asfortranarray(np.random.rand(3, 5)),
    np.zeros((0, 2)), np.array(['a', 'bc']), np.array([(1, 2.0)], dtype=[('i', 'i4'), ('f', 'f8')]),
    {'nested': [np.arange(3), (np.ones(2), {'k': np.float64(2.0)})]},
]


@pytest.mark.parametrize('value', VALUES, ids=[repr(type(v).__name__) + str(i) for i, v in enumerate(VALUES)])
def test_round_trip_through_a_job(root_path, value):
    out = echo.run(x=value).wait()
    assert type(out) is type(value)
    if isinstance(value, np.ndarray):
        assert out.dtype == value.dtype and out.shape == value.shape
        assert np.array_equal(out, value)
        assert out.flags['F_CONTIGUOUS'] == value.flags['F_CONTIGUOUS']
    else:
        assert repr(out) == repr(value)


@pytest.mark.parametrize('value, message', [
    ({1, 2}, "argument 'x': set is not allowed"),
    ([1, 2, {'w': {3}}], "argument 'x'[2]['w']: set is not allowed"),
    ({1: 'a'}, "argument 'x': dict key 1 is a int, only str keys are allowed"),
    (np.array([{}, 1], dtype=object), "argument 'x': object arrays are not allowed (dtype object)"),
    (object(), "argument 'x': object is not allowed"),
    (lambda: 1, "argument 'x': function is not allowed"),
])
def test_forbidden_types_raise_typeerror_naming_the_place(root_path, value, message):
    before = glob.glob(os.path.join(root_path, 'jobs', '*', '*'))
    with pytest.raises(TypeError) as info:
        echo.run(x=value)
    assert str(info.value) == message
    assert glob.glob(os.path.join(root_path, 'jobs', '*', '*')) == before  # no job was written


def test_same_array_is_stored_once(root, parallel):
    big = np.random.rand(200, 200)
    jobs = [echo.run(x=big) for _ in range(20)]
    for j in jobs:
        assert np.array_equal(j.wait(), big)
    blobs = glob.glob(os.path.join(root.layout.store, '*', '*.npy'))
    assert len(blobs) == 1


def test_corrupt_blob_is_detected_not_used(root):
    arr = np.arange(100.0)
    sha1 = root.store.put_array(arr)
    path = root.store.blob_path(sha1, '.npy')
    os.chmod(path, 0o600)
    with open(path, 'r+b') as f:
        f.seek(-8, 2)
        f.write(b'\x00' * 8)
    with pytest.raises(CorruptFileError, match='content hash is'):
        root.store.get_array(sha1)


def test_crafted_object_array_in_store_is_refused(root):
    buf = io.BytesIO()
    np.save(buf, np.array([{'evil': 1}], dtype=object), allow_pickle=True)
    import hashlib
    data = buf.getvalue()
    sha1 = hashlib.sha1(data).hexdigest()
    path = root.store.blob_path(sha1, '.npy')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    with pytest.raises(CorruptFileError, match='refused to load'):
        root.store.get_array(sha1)


def test_files_travel_by_content(root_path, tmp_path, parallel):
    src = tmp_path / 'input.txt'
    src.write_text('hello file')
    with hi.Config(job_handler=parallel(1)):
        assert read_file.run(f=hi.File(str(src))).wait() == 'hello file'
        made = make_file.run(text='made in a job').wait()
    assert isinstance(made, hi.File)
    assert made.read_text() == 'made in a job'
    assert made.path.startswith(os.path.join(root_path, 'store'))


def test_tuple_results_stay_tuples_and_dict_keys_stay_strings(root_path):
    assert echo.run(x={'t': (1, 2), 'l': [1, 2]}).wait() == {'t': (1, 2), 'l': [1, 2]}


def test_an_int_too_long_for_json_names_its_place(root_path, parallel):
    from jobfuncs import huge_int
    before = glob.glob(os.path.join(root_path, 'jobs', '*', '*'))
    with pytest.raises(ValueError, match=r"argument 'x'\[1\]: an int of 16610 bits has more digits than Python "
                                         r"writes as text .*: pass it as a str"):
        echo.run(x=[1, 10 ** 5000])
    assert glob.glob(os.path.join(root_path, 'jobs', '*', '*')) == before  # no job was written
    with hi.Config(job_handler=parallel(1)):
        job = huge_int.run(digits=5000)
        with pytest.raises(hi.JobError, match='an int of 16610 bits has more digits than Python writes as text'):
            job.wait(timeout=60)
    assert huge_int.run(digits=4000).wait() == 10 ** 4000  # below the limit: as it was


def test_an_argument_named_like_the_records_tag_is_refused(root_path):
    """The records tag values with the key "__hither__": a job's arguments with that name
    would be read back as a tag (``unknown value tag``), so it is refused at .run()."""
    from jobfuncs import keywords
    with pytest.raises(TypeError, match="keywords.run\\(\\): an argument named '__hither__' cannot be passed"):
        keywords.run(**{'__hither__': 'a', 'b': 1})
    with pytest.raises(TypeError, match="item 0: an argument named '__hither__' cannot be passed"):
        keywords.map([{'__hither__': 'a'}])
    assert keywords.run(b=1, c={'__hither__': 'x'}).wait() == ['b', 'c']  # inside a value: a dict like any

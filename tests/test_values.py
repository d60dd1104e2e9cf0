"""Values come back exactly - type, dtype (units, byte lengths, precision, byte order, fields)
and bits - or are refused at .run() with a message that names them; hi.File keeps its bytes
from the moment it is made."""

import glob
import hashlib
import io
import json
import os
import warnings

import numpy as np
import pytest

import hither_fs as hi
from hither_fs.cache import cache_key
from hither_fs.runtime import serialization
from hither_fs.runtime.serialization import MAX_DEPTH, blob_refs, decode, encode
from hither_fs.runtime.store import Store
from jobfuncs import echo, facts, file_from_tempdir, read_file, value_facts

UNITS = ['Y', 'M', 'W', 'D', 'h', 'm', 's', 'ms', 'us', 'ns', 'ps', 'fs', 'as']
INTS = ['i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8']
FLOATS = [np.float16, np.float32, np.float64, np.longdouble]
COMPLEXES = [np.complex64, np.complex128, np.clongdouble]


def nan_with(dtype, bits):
    """A NaN of the given bits (sign and payload) as a scalar of ``dtype``."""
    return np.array([bits], dtype='u{}'.format(np.dtype(dtype).itemsize)).view(dtype)[0]


def structured_dtypes():
    return [
        np.dtype([('i', '<i4'), ('f', '>f8'), ('s', 'S3'), ('u', '<U2'), ('t', 'm8[us]')]),
        np.dtype({'names': ['a', 'b'], 'formats': ['i1', '<f8'], 'offsets': [0, 8], 'itemsize': 24}),
        np.dtype([(('a title', 'a'), '<i2'), ('sub', '<f4', (2, 3)), ('inner', [('x', 'u1'), ('y', '>c8')])]),
    ]


def arrays():
    """An array of every dtype kind numpy has (but object), in several byte orders and layouts."""
    out = {'bool': np.array([True, False, True])}
    for code in INTS:
        info = np.iinfo(code)
        out[code] = np.array([info.min, 0, info.max], dtype=code)
        out['>' + code] = np.array([info.min, 1, info.max], dtype='>' + code)
    for t in FLOATS:
        out[np.dtype(t).name] = np.array([-0.0, 1 / 3, np.inf, -np.inf, np.nan, np.finfo(t).tiny], dtype=t)
    out['float64 NaN payloads'] = np.array([nan_with('f8', 0xfff8000000000001), nan_with('f8', 0x7ff0000000000abc)])
    out['float32 NaN payload'] = np.array([nan_with('f4', 0xffc00123)])
    for t in COMPLEXES:
        out[np.dtype(t).name] = np.array([1 / 3 + 2j, complex(np.inf, -0.0), complex(np.nan, 1)], dtype=t)
    out['>c16'] = np.array([1 + 2j], dtype='>c16')
    for unit in UNITS:
        out['M8[{}]'.format(unit)] = np.array([0, 1, -5, 'NaT'], dtype='M8[{}]'.format(unit))
        out['m8[{}]'.format(unit)] = np.array([0, 1, -5, 'NaT'], dtype='m8[{}]'.format(unit))
    out['m8 generic'] = np.array([7, -1], dtype='m8')
    out['m8[10ns]'] = np.array([3], dtype='m8[10ns]')
    out['>M8[ns]'] = np.array(['2020-01-01T00:00:00.000000001'], dtype='>M8[ns]')
    out['S5'] = np.array([b'ab', b'a\x00b', b'abcde'], dtype='S5')
    out['S0 empty'] = np.array([], dtype='S1')
    out['U3'] = np.array(['ab', '\u20ac\U0001f600', ''], dtype='U3')
    out['>U2'] = np.array(['xy'], dtype='>U2')
    out['V4'] = np.array([b'\x00\x01\x02\x03'], dtype='V4')
    for i, dtype in enumerate(structured_dtypes()):
        out['structured {}'.format(i)] = np.zeros(3, dtype=dtype)
    out['structured values'] = np.array([(1, 2.5, b'ab\x00', 'z', 4)], dtype=structured_dtypes()[0])
    out['fortran'] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    out['strided'] = np.arange(20, dtype='>i2')[::3]
    out['0-d'] = np.array(5, dtype='u2')
    out['empty'] = np.zeros((0, 3), dtype='c8')
    return out


def scalars():
    """A numpy scalar of every kind, including the ones issue 11 found changed on the way."""
    out = {'bool': np.bool_(True)}
    for code in INTS:
        out[code] = np.dtype(code).type(np.iinfo(code).max)
    for t in FLOATS:
        name = np.dtype(t).name
        out[name] = t(1) / t(3)
        out[name + ' -0.0'] = t(-0.0)
        out[name + ' inf'] = t(-np.inf)
        out[name + ' nan'] = t(np.nan)
    out['float64 -nan'] = nan_with('f8', 0xfff8000000000000)
    out['float64 NaN payload'] = nan_with('f8', 0x7ff8000000000abc)
    out['float32 NaN payload'] = nan_with('f4', 0x7fc00123)
    out['float16 NaN payload'] = nan_with('f2', 0x7e01)
    for t in COMPLEXES:
        out[np.dtype(t).name] = t(1) / t(3) + t(2j)
    for unit in UNITS:
        out['datetime64[{}]'.format(unit)] = np.datetime64(5, unit)
        out['timedelta64[{}]'.format(unit)] = np.timedelta64(-5, unit)
    out['timedelta64(5, ns)'] = np.timedelta64(5, 'ns')
    out['timedelta64 generic'] = np.timedelta64(5)
    out['timedelta64 NaT[ns]'] = np.timedelta64('NaT', 'ns')
    out['timedelta64 NaT[s]'] = np.timedelta64('NaT', 's')
    out['timedelta64 NaT generic'] = np.timedelta64('NaT')
    out['timedelta64[10ns]'] = np.array(3, dtype='m8[10ns]')[()]
    out['datetime64 NaT[D]'] = np.datetime64('NaT', 'D')
    out['bytes_ |S3'] = np.bytes_(b'ab\x00')
    out['bytes_ |S2'] = np.bytes_(b'ab')
    out['bytes_ empty'] = np.bytes_(b'')
    out['str_ <U3'] = np.str_('ab\x00')
    out['str_ non-ASCII'] = np.str_('\u20ac\U0001f600')
    out['str_ empty'] = np.str_('')
    out['void V3'] = np.void(b'a\x00\x00')
    out['structured void'] = np.array([(1, 2.5, b'ab', 'z', 4)], dtype=structured_dtypes()[0])[0]
    return out


def everything():
    out = {'array ' + k: v for k, v in arrays().items()}
    out.update(('scalar ' + k, v) for k, v in scalars().items())
    out['recarray'] = np.rec.array([(1, 2.5), (3, 4.5)], dtype=[('i', '<i4'), ('f', '>f8')])
    out['record'] = out['recarray'][1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PendingDeprecationWarning)
        out['matrix'] = np.matrix([[1.5, 2], [3, 4]], dtype='>f4')
    return out


ALL = everything()


def dtype_kinds():
    kinds = set()
    for v in ALL.values():
        kinds.add(v.dtype.kind)
    return kinds


def test_the_values_cover_every_dtype_kind():
    assert dtype_kinds() == set('biufcmMSUV')


def through_json(obj):
    return json.loads(json.dumps(obj, sort_keys=True, allow_nan=True))


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / 'store'))


@pytest.mark.parametrize('name', sorted(ALL))
def test_round_trip_in_process_is_exact(store, name):
    value = ALL[name]
    out = decode(through_json(encode(value, store, "argument 'x'")), store)
    assert type(out) is type(value)
    assert out.dtype.str == value.dtype.str and out.dtype == value.dtype
    assert value_facts(out) == value_facts(value)


def test_the_cases_of_issue_11(store):
    def back(value):
        return decode(through_json(encode(value, store, 'x')), store)
    td = back(np.timedelta64(5, 'ns'))
    assert type(td) is np.timedelta64 and td.dtype.str == '<m8[ns]' and td == np.timedelta64(5, 'ns')
    b = back(np.bytes_(b'ab\x00'))
    assert type(b) is np.bytes_ and b.dtype.str == '|S3' and bytes(b) == b'ab\x00'
    c = back(np.clongdouble(1) / 3)
    assert type(c) is np.clongdouble and c == np.clongdouble(1) / 3
    rec = back(np.rec.array([(1, 2.0)], dtype=[('i', 'i4'), ('f', 'f8')]))
    assert type(rec) is np.recarray and rec.i[0] == 1 and rec[0].f == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # decoding makes a view: no PendingDeprecationWarning of np.matrix()
        m = back(np.asarray([[1, 2], [3, 4]]).view(np.matrix))
    assert type(m) is np.matrix and m.tolist() == [[1, 2], [3, 4]]


def test_longdouble_padding_does_not_make_equal_values_differ(store):
    """x86 longdouble keeps 10 of its 16 bytes; numpy leaves the rest uninitialised. Equal values
    are stored once and give one cache key."""
    values = [np.longdouble(1) / 3 for _ in range(5)] + [np.clongdouble(1) / 3 + np.clongdouble(1j) for _ in range(5)]
    encoded = [encode(v, store, 'x') for v in values]
    assert len({e['sha1'] for e in encoded[:5]}) == 1 and len({e['sha1'] for e in encoded[5:]}) == 1
    arrays = [np.empty(4, np.longdouble) for _ in range(3)]
    for a in arrays:
        a[:] = [1, 2, 3, 4]
    assert len({encode(a, store, 'x')['sha1'] for a in arrays}) == 1


# -- what is refused -----------------------------------------------------------------------

class MyArray(np.ndarray):
    pass


class MyFloat(np.float64):
    pass


def refused():
    cases = [
        (np.array([{}, 1], dtype=object), "argument 'x': object arrays are not allowed (dtype object)"),
        (np.zeros(2, dtype=[('a', 'i4'), ('o', 'O')]), "argument 'x': object arrays are not allowed"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "argument 'x': np.ma.MaskedArray is not allowed"),
        (np.ma.masked, "argument 'x': np.ma.MaskedArray is not allowed"),
        (np.zeros(3).view(MyArray), "argument 'x': test_values.MyArray (a subclass of numpy.ndarray) is not "
                                    "allowed: pass np.asarray(x)"),
        (MyFloat(1.0), "argument 'x': test_values.MyFloat (a subclass of numpy.float64) is not allowed"),
    ]
    if hasattr(np, 'dtypes') and hasattr(np.dtypes, 'StringDType'):
        cases.append((np.array(['a', 'bc'], dtype=np.dtypes.StringDType()),
                      "argument 'x': numpy StringDType arrays are not allowed: pass x.astype('U')"))
    return cases


@pytest.mark.parametrize('value, message', refused(), ids=[type(v).__name__ for v, _ in refused()])
def test_refused_at_run_with_a_message_that_names_them(root_path, value, message):
    before = glob.glob(os.path.join(root_path, 'jobs', '*', '*'))
    with pytest.raises(TypeError) as info:
        echo.run(x=value)
    assert str(info.value).startswith(message)
    assert glob.glob(os.path.join(root_path, 'jobs', '*', '*')) == before


def test_a_memmap_travels_as_a_plain_ndarray(store, tmp_path):
    mm = np.memmap(str(tmp_path / 'mm.bin'), dtype='>i4', mode='w+', shape=(2, 3))
    mm[:] = np.arange(6).reshape(2, 3)
    mm.flush()
    out = decode(through_json(encode(mm, store, 'x')), store)
    assert type(out) is np.ndarray and out.dtype.str == '>i4' and out.tolist() == [[0, 1, 2], [3, 4, 5]]


# -- depth ---------------------------------------------------------------------------------

def nested(depth, make=lambda inner: [inner]):
    value = 0
    for _ in range(depth):
        value = make(value)
    return value


@pytest.mark.parametrize('make', [lambda v: [v], lambda v: (v,), lambda v: {'k': v}, lambda v: {'__hither__': v}],
                         ids=['list', 'tuple', 'dict', 'tagged dict'])
def test_depth_up_to_the_limit_travels_and_beyond_it_is_a_valueerror(store, make):
    deep = nested(MAX_DEPTH, make)
    assert decode(through_json(encode(deep, store, 'x')), store) == deep
    with pytest.raises(ValueError, match=r"^argument 'x': nested deeper than 100 levels"):
        encode(nested(MAX_DEPTH + 1, make), store, "argument 'x'")


def test_a_1000_deep_list_is_a_valueerror_at_run(root_path):
    before = glob.glob(os.path.join(root_path, 'jobs', '*', '*'))
    with pytest.raises(ValueError) as info:
        echo.run(x=nested(1000))
    assert str(info.value).startswith("argument 'x': nested deeper than 100 levels")
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match='contains itself'):
        echo.run(x={'a': loop})
    assert glob.glob(os.path.join(root_path, 'jobs', '*', '*')) == before


def test_a_too_deep_record_decodes_to_a_clear_error(store):
    """A record edited by hand (or damaged) deeper than anything hither_fs writes."""
    record = nested(5000)
    with pytest.raises(ValueError, match='nested deeper than 100 levels, more than hither_fs writes'):
        decode(record, store)
    record = nested(5000, lambda v: {'__hither__': 'tuple', 'items': [v]})
    with pytest.raises(ValueError, match='more than hither_fs writes'):
        decode(record, store)
    assert list(blob_refs(nested(5000, lambda v: [v, {'__hither__': 'file', 'sha1': 'a' * 40}]))) == \
        [('a' * 40, '')] * 5000  # gc, du and fsck walk it without recursing


def test_the_deepest_value_travels_through_every_path_even_from_deep_in_the_stack(root_path):
    """.run() (encoding, cache key, JSON) and the job (decoding, encoding the result) with the
    caller already 500 frames deep."""
    kinds = [lambda v: (v,), lambda v: {'__hither__': v}]  # the deepest JSON: two levels for each
    deep = 0
    for i in range(MAX_DEPTH):
        deep = kinds[i % 2](deep)

    def recurse(n):
        if n:
            return recurse(n - 1)
        with hi.Config(job_cache=hi.JobCache()):
            return echo.run(x=deep).wait()
    assert recurse(500) == deep


# -- the record format: old records read as before, cache keys of unchanged values stay ----

def test_encodings_that_were_right_before_are_unchanged(store):
    """These are what the code before issue 11 wrote (cache keys are made of them)."""
    assert encode(np.int64(14), store, 'x') == {'__hither__': 'scalar', 'dtype': 'int64', 'value': 14}
    assert encode(np.float32(1.5), store, 'x') == {'__hither__': 'scalar', 'dtype': 'float32', 'value': 1.5}
    assert encode(np.bool_(True), store, 'x') == {'__hither__': 'scalar', 'dtype': 'bool', 'value': True}
    assert encode(np.timedelta64(5, 'ns'), store, 'x') == \
        {'__hither__': 'scalar', 'dtype': 'timedelta64[ns]', 'value': 5}
    assert encode(np.timedelta64('NaT'), store, 'x') == \
        {'__hither__': 'scalar', 'dtype': 'timedelta64', 'value': None}
    nan = encode(np.float64(np.nan), store, 'x')
    assert nan['dtype'] == 'float64' and nan['value'] != nan['value']
    assert encode(np.bytes_(b'ab\x00'), store, 'x') == {
        '__hither__': 'scalar', 'dtype': '|S3', 'sha1': store.put_array(np.array(b'ab\x00', dtype='S3'))}
    a = np.arange(6.0).reshape(2, 3)
    assert encode(a, store, 'x') == {'__hither__': 'ndarray', 'sha1': store.put_array(a), 'dtype': 'float64',
                                     'shape': [2, 3]}
    args = {'a': encode(a, store, 'a'), 'n': encode(np.int64(3), store, 'n'), 't': encode((1, [2.5]), store, 't')}
    assert cache_key('f', '0.1.0', args, {}) == hashlib.sha1(json.dumps(
        {'function': 'f', 'version': '0.1.0', 'args': args}, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def test_cache_keys_of_pipelines_are_the_keys_they_were(store):
    """cache_key swaps upstream job ids for their keys without recursing; the keys are those the
    recursive rebuild before gave."""
    def old_key(name, version, args, upstream_keys):
        def canon(obj):
            if isinstance(obj, list):
                return [canon(v) for v in obj]
            if isinstance(obj, dict):
                if obj.get('__hither__') == 'job':
                    return {'__hither__': 'job', 'key': upstream_keys[obj['id']]}
                return {k: canon(v) for k, v in obj.items()}
            return obj
        text = json.dumps({'function': name, 'version': version, 'args': canon(args)},
                          sort_keys=True, separators=(',', ':'), allow_nan=True)
        return hashlib.sha1(text.encode('utf-8')).hexdigest()
    job = {'__hither__': 'job', 'id': 'a' * 16}
    other = {'__hither__': 'job', 'id': 'b' * 16}
    upstream = {'a' * 16: '1' * 40, 'b' * 16: '2' * 40}
    values = {'x': job, 'y': [1, -0.0, float('nan'), float('inf'), 10 ** 30, 1e-300, 'é\u20ac', None, True,
                              {'__hither__': 'tuple', 'items': [other, {'z': [job]}]}],
              'a': encode({'__hither__': 1, 't': (np.arange(3), np.float32(1.5))}, store, 'a')}
    assert cache_key('f', '1', values, upstream) == old_key('f', '1', values, upstream)
    assert cache_key('f', '1', values, upstream) != cache_key('f', '1', values, {'a' * 16: '3' * 40,
                                                                                 'b' * 16: '2' * 40})


def test_old_records_decode_with_their_recorded_dtype(store):
    """Records of the existing format (no "type"): a timedelta64 count comes back in its unit,
    a |S3 scalar blob as |S3."""
    td = decode({'__hither__': 'scalar', 'dtype': 'timedelta64[ns]', 'value': 5}, store)
    assert td.dtype.str == '<m8[ns]' and td == np.timedelta64(5, 'ns')
    nat = decode({'__hither__': 'scalar', 'dtype': 'timedelta64[ns]', 'value': None}, store)
    assert nat.dtype.str == '<m8[ns]' and np.isnat(nat)
    sha1 = store.put_array(np.array(b'ab\x00', dtype='S3'))
    b = decode({'__hither__': 'scalar', 'dtype': '|S3', 'sha1': sha1}, store)
    assert b.dtype.str == '|S3' and bytes(b) == b'ab\x00'
    sha1 = store.put_array(np.array([[1, 2]]))
    assert type(decode({'__hither__': 'ndarray', 'sha1': sha1, 'dtype': 'int64', 'shape': [1, 2]}, store)) is np.ndarray


def test_cache_keys_tell_apart_values_that_differ(store):
    def key(value):
        return cache_key('f', '1', {'x': encode(value, store, 'x')}, {})
    pairs = [(lambda: np.timedelta64(5, 'ns'), lambda: np.timedelta64(5, 's')),
             (lambda: np.bytes_(b'ab\x00'), lambda: np.bytes_(b'ab')),
             (lambda: np.arange(4).reshape(2, 2), lambda: np.arange(4).reshape(2, 2).view(np.matrix)),
             (lambda: np.zeros(2, dtype=[('a', 'i4')]), lambda: np.zeros(2, dtype=[('a', 'i4')]).view(np.recarray)),
             (lambda: np.float64(np.nan), lambda: nan_with('f8', 0xfff8000000000000)),
             (lambda: np.array([1], '<i4'), lambda: np.array([1], '>i4')),
             (lambda: np.float64(0.0), lambda: np.float64(-0.0)),
             (lambda: np.longdouble(1) / 3, lambda: np.float64(1) / 3)]
    for a, b in pairs:
        assert key(a()) != key(b()), (a(), b())
        assert key(a()) == key(a()) and key(b()) == key(b()), (a(), b())  # equal values, one key


# -- a round trip through a worker process ---------------------------------------------------

def test_every_value_round_trips_exactly_through_a_worker(tmp_path, parallel, root_path):
    """The worker receives exactly what was sent (it describes it, type, dtype and bits), and
    what it returns arrives exactly."""
    with hi.Config(job_handler=parallel(1)):
        job = facts.run(x=ALL)
        seen = job.wait(timeout=120)
        back = echo.run(x=ALL).wait(timeout=120)
    assert job.get_runtime_info()['pid'] != os.getpid()
    expected = dict(value_facts(ALL)[1])  # (the job's JSON records keep dict keys sorted, not in order)
    assert dict(seen[1]) == expected
    assert dict(value_facts(back)[1]) == expected
    assert type(back['matrix']) is np.matrix and type(back['record']) is np.record
    assert back['scalar timedelta64(5, ns)'].dtype.str == '<m8[ns]'
    assert back['scalar bytes_ |S3'].dtype.str == '|S3'


def test_the_brief_s_worker_round_trip(tmp_path):
    """As a user would write it, with a root of its own."""
    handler = hi.ParallelJobHandler(1)
    try:
        with hi.Config(job_handler=handler, root=str(tmp_path / 'root')):
            out = echo.run(x=(np.timedelta64(5, 'ns'), np.bytes_(b'ab\x00'), np.clongdouble(2) / 3)).wait(timeout=120)
    finally:
        handler.halt()
    assert [v.dtype.str for v in out] == ['<m8[ns]', '|S3', np.dtype(np.clongdouble).str]
    assert out[2] == np.clongdouble(2) / 3 and type(out) is tuple


# -- hi.File keeps its bytes from the moment it is made --------------------------------------

def test_a_file_made_in_a_job_in_a_temporary_directory_outlives_it(root_path, parallel):
    in_process = file_from_tempdir.run(text='made in process').wait()
    with hi.Config(job_handler=parallel(1)):
        on_worker = file_from_tempdir.run(text='made on a worker').wait(timeout=60)
    for made, text in ((in_process, 'made in process'), (on_worker, 'made on a worker')):
        assert isinstance(made, hi.File) and made.name == 'made.txt'
        assert made.read_text() == text
        assert made.path.startswith(os.path.join(root_path, 'store'))
        assert made.sha1 == hashlib.sha1(text.encode()).hexdigest()


def test_a_file_whose_source_is_deleted_after_it_was_made_still_travels(root_path, parallel, tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text('the bytes at hi.File()')
    f = hi.File(str(src))
    src.unlink()
    assert f.read_text() == 'the bytes at hi.File()' and os.path.exists(f.path) and f.name == 'input.txt'
    inode = os.stat(f.path).st_ino
    assert read_file.run(f=f).wait() == 'the bytes at hi.File()'
    with hi.Config(job_handler=parallel(1)):
        assert read_file.run(f=f).wait(timeout=60) == 'the bytes at hi.File()'
    assert os.stat(f.path).st_ino == inode  # stored once: later runs copy nothing


def test_a_file_keeps_the_bytes_it_had_when_made(root_path, tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text('before')
    f = hi.File(src)  # a pathlib.Path will do
    src.write_text('after, and longer')
    assert read_file.run(f=f).wait() == 'before'
    assert f.sha1 == hashlib.sha1(b'before').hexdigest()


def test_a_file_made_for_one_root_travels_to_another(root_path, tmp_path):
    src = tmp_path / 'input.bin'
    src.write_bytes(b'\x00\x01 data')
    f = hi.File(str(src))
    src.unlink()
    other = str(tmp_path / 'other-root')
    with hi.Config(root=other):
        out = echo.run(x=f).wait()
    assert out.path.startswith(os.path.join(other, 'store')) and out.read_bytes() == b'\x00\x01 data'


def test_a_file_whose_stored_copy_was_collected(root_path, root, tmp_path):
    """hither-fs gc removes blobs no job refers to after its grace period: the original file
    is stored again if it is unchanged; if it is gone too, .run() says so."""
    src = tmp_path / 'input.txt'
    src.write_text('kept')
    f = hi.File(str(src))
    os.unlink(f.path)
    assert read_file.run(f=f).wait() == 'kept'
    os.unlink(f.path)
    src.unlink()
    with pytest.raises(FileNotFoundError, match=r"argument 'f': the bytes of hi.File 'input.txt' .* are no longer "
                                                r"in the store"):
        read_file.run(f=f)


def test_a_file_of_nothing_is_refused_when_made(root_path, tmp_path):
    with pytest.raises(FileNotFoundError, match='hi.File: .*missing.txt does not exist'):
        hi.File(str(tmp_path / 'missing.txt'))
    with pytest.raises(IsADirectoryError, match='is not a regular file'):
        hi.File(str(tmp_path))


def test_without_a_root_a_file_is_stored_when_first_given_to_a_job(tmp_path, store, monkeypatch):
    """Where no root is known (the container stand-in outside a job) the path is kept, and the
    bytes are stored at the first encode, as before."""
    monkeypatch.setattr(serialization, '_default_store', None)
    src = tmp_path / 'input.txt'
    src.write_text('late')
    f = hi.File(str(src))
    assert f.path == str(src)
    out = decode(encode(f, store, 'x'), store)
    assert out.read_text() == 'late' and out.path.startswith(store.path) and f.path == out.path


def test_a_file_written_by_np_save_travels(root_path, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    (tmp_path / 'a.npy').write_bytes(buf.getvalue())
    f = hi.File(str(tmp_path / 'a.npy'))
    assert echo.run(x=f).wait().read_bytes() == buf.getvalue()

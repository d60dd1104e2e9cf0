"""Shipping notebook functions as source text (hither_fs.shipping), in IPython-like sessions built here.

A session runs each cell the way IPython and ipykernel do: compiled under a
made-up file name whose source is registered in linecache, in a namespace
named '__main__'. The shipped text is then run in a fresh namespace, as a
worker would run it, and must compute what the notebook computes.
"""

import builtins
import itertools
import json
import linecache
import math
import sys
import textwrap
import types

import pytest

from hither_fs.function import HitherFunction, _registry
from hither_fs.shipping import ShipError, needs_shipping, shipped_source
from jobfuncs import add

_cell_numbers = itertools.count(1)


class Session:
    """An IPython-like session: a '__main__' namespace, and cell sources in linecache."""

    def __init__(self, registered, style='ipykernel'):
        self.ns = {'__name__': '__main__', '__builtins__': builtins}
        self.filenames = []
        self.style = style
        self._registered = registered  # the hither registry before the test
        self.forget_hither_functions()

    def forget_hither_functions(self):
        """Drop the test's registrations, as a fresh process (a worker, a restarted kernel) would not have them."""
        for name in set(_registry) - set(self._registered):
            del _registry[name]

    def run(self, source, filename=None):
        """Run a cell; with a filename like '<stdin>' its source is not registered (as with `python -`)."""
        source = textwrap.dedent(source)
        if filename is None:
            n = next(_cell_numbers)
            filename = ('/tmp/ipykernel_4242/{}.py'.format(n) if self.style == 'ipykernel'
                        else '<ipython-input-{}-{:012x}>'.format(n, n))
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            self.filenames.append(filename)
        exec(compile(source, filename, 'exec'), self.ns)

    def ship(self, name):
        obj = self.ns[name]
        return shipped_source(getattr(obj, '__wrapped__', obj), name)

    def load(self, text):
        """Run shipped text in a fresh module namespace, as a worker does."""
        self.forget_hither_functions()
        ns = {'__name__': '__hither_main__'}
        exec(compile(text, '<shipped>', 'exec'), ns)
        return ns


@pytest.fixture
def new_session():
    registered = dict(_registry)
    sessions = []

    def make(style='ipykernel'):
        sessions.append(Session(registered, style))
        return sessions[-1]
    yield make
    for s in sessions:
        for filename in s.filenames:
            linecache.cache.pop(filename, None)
    _registry.clear()
    _registry.update(registered)


@pytest.fixture
def session(new_session):
    return new_session()


NOTEBOOK = [
    '''
    import numpy as np
    import hither_fs as hi
    from math import sqrt
    from collections import OrderedDict as OD
    ''',
    'SCALE = 3',
    '''
    def helper(x):
        return x * SCALE
    ''',
    '''
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm(self):
            return sqrt(self.x ** 2 + self.y ** 2)
    ''',
    '''
    @hi.function('ship_f', '0.1.0')
    def ship_f(x):
        order = OD(a=1)
        return float(helper(np.float64(x)) + 1 + Point(3, 4).norm() + order['a'])
    ''',
]


def test_notebook_function_runs_from_its_shipped_source(session):
    for cell in NOTEBOOK:
        session.run(cell)
    text = session.ship('ship_f')
    assert text.startswith('# shipped by hither_fs from a notebook')
    assert 'pickle' not in text
    lines = text.splitlines()
    assert lines[2:6] == ['from collections import OrderedDict as OD', 'from math import sqrt',
                          'import hither_fs as hi', 'import numpy as np']
    assert lines[7] == 'SCALE = 3'
    assert "@hi.function('ship_f', '0.1.0')" in text and text.rstrip().endswith("order['a'])")
    loaded = session.load(text)
    f = loaded['ship_f']
    assert isinstance(f, HitherFunction) and (f.name, f.version) == ('ship_f', '0.1.0')
    assert _registry['ship_f'] is f
    assert [f(x) for x in range(4)] == [session.ns['ship_f'](x) for x in range(4)] == [7.0, 10.0, 13.0, 16.0]


def test_only_globals_the_code_looks_up_are_shipped(session):
    session.run('''
        import numpy as np
        data = np.zeros(3)       # not shippable, but only an attribute and a local share its name
        UNUSED = np.ones(2)
        total = 5
        class Box:
            def __init__(self):
                self.data = [1, 2]

        def only_f(x):
            data = Box().data
            return sum(data) + x + total
    ''')
    text = session.ship('only_f')
    assert 'UNUSED' not in text and '\ndata =' not in text and 'import numpy' not in text
    assert session.load(text)['only_f'](1) == 9


def test_nested_functions_lambdas_and_comprehensions_find_their_globals(session):
    session.run('''
        A, B, C, D, E, F = 1, 10, 100, 1000, 10000, 100000
        def nest_f(x):
            def inner(y, k=B):
                return y + A + k
            square = lambda v: v * C
            return (inner(x) + square(x) + sum([D for _ in range(2)]) + sum(E for _ in range(1))
                    + sum({i: F for i in range(1)}.values()))
    ''')
    text = session.ship('nest_f')
    assert session.load(text)['nest_f'](2) == session.ns['nest_f'](2) == 2 + 1 + 10 + 200 + 2000 + 10000 + 100000


def test_recursion_and_mutual_recursion(session):
    session.run('''
        import hither_fs as hi
        def is_even(n):
            return True if n == 0 else is_odd(n - 1)
        def is_odd(n):
            return False if n == 0 else is_even(n - 1)
    ''')
    session.run('''
        @hi.function('rec_fact', '0.1.0')
        def rec_fact(n):
            return 1 if n <= 1 else n * rec_fact(n - 1) + (0 if is_even(n) else 0)
    ''')
    text = session.ship('rec_fact')
    assert text.count('def is_even') == text.count('def is_odd') == text.count('def rec_fact') == 1
    loaded = session.load(text)
    assert loaded['rec_fact'](5) == 120 and loaded['is_odd'](7) is True


def test_decorated_helpers_are_shipped_with_their_decorators(session):
    session.run('''
        import functools
        import hither_fs as hi
        OFFSET = 7
        def twice(g):
            @functools.wraps(g)
            def wrapper(v):
                return g(g(v))
            return wrapper
    ''')
    session.run('''
        @twice
        def inc(v):
            return v + 1

        @hi.function('dec_helper', '0.2.0')
        def dec_helper(v):
            return v + OFFSET

        @hi.function('dec_f', '0.1.0')
        def dec_f(x):
            return dec_helper(inc(x))
    ''')
    text = session.ship('dec_f')
    assert "@hi.function('dec_helper', '0.2.0')" in text and '@twice' in text
    assert text.index('def twice') < text.index('@twice')  # a decorator is defined before it is used
    loaded = session.load(text)
    assert isinstance(loaded['dec_helper'], HitherFunction) and loaded['dec_helper'].version == '0.2.0'
    assert loaded['dec_f'](1) == session.ns['dec_f'](1) == 10


def test_decorator_that_uses_its_function_is_defined_first(session):
    # Discovery from dec2_f reaches register() first, and zapp() through register's body: zapp's
    # definition must still come after register, which its decorator line calls.
    session.run('''
        HANDLERS = set()
        def register(g=None):
            if g is None:
                return zapp(1)
            HANDLERS.add(g.__name__)
            return g
    ''')
    session.run('''
        @register
        def zapp(v):
            return v * 2

        def dec2_f(x):
            return register() + zapp(x) + len(HANDLERS)
    ''')
    text = session.ship('dec2_f')
    assert text.index('def register') < text.index('@register')
    assert session.load(text)['dec2_f'](3) == 9


def test_classes_bases_and_dataclasses(session):
    session.run('''
        from dataclasses import dataclass
        class Base:
            def value(self):
                return 2
        class Derived(Base):
            pass

        @dataclass
        class Pair:
            a: int
            b: int = 3
    ''')
    session.run('''
        def cls_f(x):
            return Derived().value() * x + Pair(1).b
    ''')
    text = session.ship('cls_f')
    assert text.index('class Base') < text.index('class Derived(Base)')
    assert 'from dataclasses import dataclass' in text and '@dataclass\nclass Pair:' in text
    assert session.load(text)['cls_f'](5) == 13


def test_a_class_without_methods_defined_in_two_cells_is_ambiguous(session):
    session.run('class Amb:\n    size = 1\n')
    session.run('class Amb:\n    size = 2\n')
    session.run('def amb_f():\n    return Amb.size\n')
    with pytest.raises(ShipError, match=r"class 'Amb' is defined differently in several notebook cells.*restart"):
        session.ship('amb_f')


CONSTANTS = dict(
    K_NONE=None, K_BOOL=True, K_INT=-12345678901234567890, K_FLOAT=0.1, K_NEGZERO=-0.0, K_INF=float('inf'),
    K_NINF=float('-inf'), K_COMPLEX=1 - 2j, K_CINF=complex(float('inf'), 1), K_STR='it\'s "é"\n', K_BYTES=b'\x00ab',
    K_TUPLE=(1, ('x',), [2.5, {'k': (None, b'')}]), K_ONE=(1,), K_EMPTY=(), K_LIST=[[], {}],
    K_DICT={'z': 1, 'a': {2: frozenset({3, 1})}}, K_SET={'b', 'a', 'c'}, K_ESET=set(), K_FSET=frozenset(),
)


def test_literal_constants_of_every_simple_type(session):
    session.ns.update(CONSTANTS, K_NAN=float('nan'))
    session.run('def const_f():\n    return [{}]\n'.format(', '.join(sorted(CONSTANTS) + ['K_NAN'])))
    text = session.ship('const_f')
    assert "K_SET = {'a', 'b', 'c'}" in text and "K_NAN = float('nan')" in text
    assert "K_DICT = {'z': 1, 'a': {2: frozenset({1, 3})}}" in text  # a dict keeps its order
    loaded = session.load(text)
    for name, value in CONSTANTS.items():
        assert type(loaded[name]) is type(value) and loaded[name] == value, name
    assert list(loaded['K_DICT']) == ['z', 'a'] and math.copysign(1, loaded['K_NEGZERO']) == -1
    assert math.isnan(loaded['K_NAN'])
    assert len(loaded['const_f']()) == len(CONSTANTS) + 1


def test_shipped_text_is_deterministic(new_session):
    texts = []
    for style in ('ipykernel', 'ipython'):  # the same cells under other file names, in a fresh session
        s = new_session(style)
        for cell in NOTEBOOK:
            s.run(cell)
        s.ns['TAGS'] = {'tag{}'.format(i) for i in range(50)}
        s.run("def det_f(x):\n    return ship_f(x) if 'tag1' in TAGS else None\n")
        texts += [s.ship('det_f'), s.ship('det_f')]
    assert len(set(texts)) == 1


def test_another_name_for_a_notebook_function(session):
    session.run('def base_fn(v):\n    return v + 1\nother = base_fn\ndef alias_f(x):\n    return other(x)\n')
    text = session.ship('alias_f')
    assert text.index('def base_fn') < text.index('other = base_fn')
    assert session.load(text)['alias_f'](1) == 2


@pytest.mark.parametrize('cell, expected', [
    ('import numpy as np\nARR = np.arange(3)',
     r"global 'ARR', an object of type numpy\.ndarray,.*argument of \.run\(\)"),
    ('class P:\n    pass\nORIGIN = P()',
     r"global 'ORIGIN', an object of type P,.*move the function into a \.py module"),
    ('import os\nFH = open(os.devnull)', r"global 'FH', an object of type _io\.TextIOWrapper"),
    ('import numpy as np\nSC = np.float64(1)', r"global 'SC', an object of type numpy\.float64"),
    ('CYCLE = []\nCYCLE.append(CYCLE)', r"global 'CYCLE', an object of type list"),
    ('SQUARE = lambda v: v * v', r"global 'SQUARE', a lambda.*define it with `def SQUARE\(\.\.\.\):`"),
    ('def make(k):\n    def inner(v):\n        return v * k\n    return inner\nTIMES = make(3)',
     r"global 'TIMES', a function defined inside a function or class \(make\.<locals>\.inner\)"),
    ('from json import JSONDecoder\nDECODE = JSONDecoder.decode',
     r"global 'DECODE', function json\.decoder\.JSONDecoder\.decode, which a worker cannot import back"),
    ('from random import random as RAND', r"global 'RAND', an object of type builtin_function_or_method"),
], ids=['array', 'instance', 'open-file', 'numpy-scalar', 'list-in-itself', 'lambda', 'closure', 'method',
        'bound-builtin'])
def test_unshippable_globals_are_refused_with_what_to_do(session, cell, expected):
    name = expected.split("'")[1]
    session.run(cell)
    session.run('def ref_helper():\n    return {}\n\ndef ref_f():\n    return ref_helper()\n'.format(name))
    with pytest.raises(ShipError, match=r"^hither function 'ref_helper' uses the " + expected) as info:
        session.ship('ref_helper')  # ref_helper plays the hither function here
    with pytest.raises(ShipError, match=r"^hither function 'ref_f' uses the global '{}' \(through ref_helper\(\)\)"
                       .format(name)):
        session.ship('ref_f')
    assert isinstance(info.value, TypeError)


def test_refusal_names_the_function_and_global(session):
    session.run('import numpy as np\nWEIGHTS = np.ones(3)\ndef refuse_f(x):\n    return WEIGHTS * x\n')
    with pytest.raises(ShipError) as info:
        session.ship('refuse_f')
    assert str(info.value) == (
        "hither function 'refuse_f' uses the global 'WEIGHTS', an object of type numpy.ndarray, which cannot be "
        "shipped to a worker as source text: pass it as an argument of .run(), define or import it inside the "
        "function, or move the function into a .py module and import it")


@pytest.mark.parametrize('filename', ['<stdin>', '<string>'])  # `python - < script.py`, `python -c`
def test_a_function_without_source_says_to_save_the_script(session, filename):
    session.run('def nosrc_f(x):\n    return x\n', filename=filename)
    with pytest.raises(ShipError, match=r"^hither function 'nosrc_f' was defined in a script read from standard "
                                        r"input \(or `python -c`\).*save the script to a file and run `python"):
        session.ship('nosrc_f')
    session.run('def nosrc_g(x):\n    return nosrc_f(x)\n')
    with pytest.raises(ShipError, match=r"^'nosrc_f' \(used by hither function 'nosrc_g'\) was defined in a script"):
        session.ship('nosrc_g')


def test_a_class_whose_cell_is_gone_cannot_be_shipped(session):
    session.run('class Gone:\n    def m(self):\n        return 1\n', filename='<stdin>')
    session.run('def gone_f():\n    return Gone().m()\n')
    with pytest.raises(ShipError, match=r"the source of class 'Gone' cannot be found.*into a \.py module"):
        session.ship('gone_f')


def test_needs_shipping_when_main_has_no_script_file(session, monkeypatch, tmp_path):
    session.run('def need_f(x):\n    return x\n')
    fn = session.ns['need_f']
    fake_main = types.ModuleType('__main__')  # a fake __main__: a notebook kernel's has no __file__
    monkeypatch.setitem(sys.modules, '__main__', fake_main)
    assert needs_shipping(fn)
    fake_main.__file__ = '<stdin>'  # what `python - < script.py` sets
    assert needs_shipping(fn)
    script = tmp_path / 'script.py'
    script.write_text('def need_g(x):\n    return x\n')
    fake_main.__file__ = str(script)  # a script a worker can load again
    namespace = {'__name__': '__main__'}
    exec(compile(script.read_text(), str(script), 'exec'), namespace)
    assert not needs_shipping(namespace['need_g'])  # defined in it: loaded from it
    assert needs_shipping(fn)  # defined by a cell (`ipython script.ipy`), which no file holds
    monkeypatch.delattr(fake_main, '__file__')
    assert not needs_shipping(add.__wrapped__) and not needs_shipping(json.dumps)  # functions of real modules
    assert not needs_shipping(add) and not needs_shipping(len)  # not plain functions


def test_a_function_of_an_ipython_script_is_shipped(tmp_path):
    """`ipython script.ipy`: __main__ has a file, but the function's code comes from a cell that
    no file holds - shipped as source, not read from a file that is not there."""
    import os
    import subprocess
    from conftest import REPO, TESTS, missing_infrastructure
    import importlib.util
    if importlib.util.find_spec('IPython') is None:  # fails under CI, skips elsewhere
        missing_infrastructure('IPython is not installed: pip install -e .[test] (it comes with ipykernel)')
    script = tmp_path / 'script.ipy'
    script.write_text(textwrap.dedent('''
        import hither_fs as hi
        @hi.function('square_in_ipython', '0.1.0')
        def square_in_ipython(x):
            return x * x
        with hi.Config(root={root!r}, job_handler=hi.ParallelJobHandler(1)):
            print('result', square_in_ipython.run(x=4).wait())
    ''').format(root=str(tmp_path / 'root')))
    proc = subprocess.run([sys.executable, '-m', 'IPython', '--no-banner', str(script)], capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS])))
    assert 'result 16' in proc.stdout, proc.stdout + proc.stderr

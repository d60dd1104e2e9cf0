"""The README's claims point at tests: every ``tests/<file>.py::<test>`` it names exists."""

import os
import re

from conftest import REPO


def test_every_test_the_readme_names_exists():
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    refs = set(re.findall(r'tests/(test_\w+)\.py::(\w+)', readme))
    assert len(refs) > 100
    missing = []
    for module, name in sorted(refs):
        path = os.path.join(REPO, 'tests', module + '.py')
        if not os.path.exists(path):
            missing.append('{} (no such file)'.format(path))
            continue
        with open(path) as f:
            if not re.search(r'^def {}\b'.format(re.escape(name)), f.read(), re.M):
                missing.append('tests/{}.py::{}'.format(module, name))
    assert missing == []


def test_every_example_the_readme_names_exists():
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    for path in set(re.findall(r'(examples/\w+\.py|bench/\w+\.py|docs/[\w.]+)', readme)):
        assert os.path.exists(os.path.join(REPO, path)), path

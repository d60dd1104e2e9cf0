"""Who may write what a worker runs or a job cache answers with (hither_fs.trust), rule by rule,
in this process. Other users' files are tried for real in tests/test_lab.py."""

import os

import pytest

import hither_fs as hi
from hither_fs.trust import Trust, private_group


@pytest.fixture
def tree(tmp_path):
    """tmp_path/shared (sticky, world-writable, like /tmp) holding mine/ (0755) with code.py."""
    shared = tmp_path / 'shared'
    mine = shared / 'mine'
    mine.mkdir(parents=True)
    os.chmod(shared, 0o1777)
    os.chmod(mine, 0o755)
    code = mine / 'code.py'
    code.write_text('x = 1\n')
    os.chmod(code, 0o644)
    return shared, mine, code


def trust(tmp_path):
    return Trust({os.getuid()}, stops=[str(tmp_path)])


def test_code_in_my_own_directory_below_a_sticky_shared_one_is_trusted(tmp_path, tree):
    shared, mine, code = tree
    assert trust(tmp_path).reason(str(code), str(mine)) is None


def test_a_directory_code_is_imported_from_may_not_be_world_writable_even_sticky(tmp_path, tree):
    shared, mine, code = tree
    os.chmod(mine, 0o1777)
    assert trust(tmp_path).reason(str(code), str(mine)) == '{} is writable by every user (mode 1777)'.format(mine)
    os.chmod(mine, 0o777)
    assert trust(tmp_path).reason(str(code), str(mine)) == '{} is writable by every user (mode 777)'.format(mine)


def test_a_world_writable_directory_above_must_be_sticky(tmp_path, tree):
    shared, mine, code = tree
    os.chmod(shared, 0o777)
    found = trust(tmp_path).reason(str(code), str(mine))
    if os.getuid() == 0:  # mine/ is the superuser's and nobody else may write it: a trusted point
        assert found is None
    else:
        assert found == '{} is writable by every user (mode 777)'.format(shared)


def test_a_world_writable_file_is_refused(tmp_path, tree):
    shared, mine, code = tree
    os.chmod(code, 0o666)
    assert trust(tmp_path).reason(str(code), str(mine)) == '{} is writable by every user (mode 666)'.format(code)


def test_a_file_that_is_gone_is_judged_by_its_directory(tmp_path, tree):
    shared, mine, code = tree
    os.remove(code)
    assert trust(tmp_path).reason(str(code), str(mine)) is None
    os.chmod(mine, 0o777)
    assert 'is writable by every user' in trust(tmp_path).reason(str(code), str(mine))


def test_group_write_counts_only_for_the_roots_group_or_a_private_group(tmp_path, tree):
    shared, mine, code = tree
    os.chmod(mine, 0o775)
    gid = os.stat(mine).st_gid
    if private_group(gid):  # the user's own group (user-private groups): nobody else is in it
        assert trust(tmp_path).reason(str(code), str(mine)) is None
    else:
        assert 'which is not the root\'s group' in trust(tmp_path).reason(str(code), str(mine))
    assert Trust({os.getuid()}, gid, stops=[str(tmp_path)]).reason(str(code), str(mine)) is None


def test_the_walk_stops_at_a_trusted_point(tmp_path, tree):
    shared, mine, code = tree
    os.chmod(shared, 0o777)  # above the stop: not looked at
    assert Trust({os.getuid()}, stops=[str(mine)]).reason(str(code), str(mine)) is None


def test_a_job_cache_others_can_write_is_refused_at_once_and_on_read(root, tmp_path):
    open_dir = tmp_path / 'open'
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(PermissionError, match='refusing the job cache at {}: {} is writable by every user '
                                              '\\(mode 777\\)'.format(open_dir, open_dir)):
        hi.JobCache(str(open_dir))
    with pytest.raises(PermissionError, match='is writable by every user'):
        hi.JobCache(str(open_dir / 'not-yet'))  # made later, in a directory anyone may write
    cache = hi.JobCache(str(tmp_path / 'mine'))
    from jobfuncs import add
    with hi.Config(job_cache=cache):
        assert add.run(x=1, y=2).wait() == 3
        entry = [os.path.join(d, n) for d, _, names in os.walk(cache.path) for n in names if n.endswith('.json')]
        assert len(entry) == 1
        os.chmod(entry[0], 0o666)  # anyone could replace the result now
        with pytest.raises(PermissionError, match='{} is writable by every user \\(mode 666\\)'.format(entry[0])):
            add.run(x=1, y=2)

"""Opening roots: defaults, bad paths, privacy, atomic files, cheap waiting."""

import os
import stat
import time

import pytest

import hither_fs as hi
from hither_fs.root import Root
from hither_fs.runtime.files import CorruptFileError, atomic_write, read_json
from jobfuncs import add, sleepy


def test_new_root_is_private_and_readable_by_hand(tmp_path):
    root = Root(str(tmp_path / 'r'))
    assert stat.S_IMODE(os.stat(root.path).st_mode) == 0o700
    assert read_json(os.path.join(root.path, 'root.json'))['mode'] == 'private'
    assert root.unsafe_reason() is None


# shared='group' with the creator's own group warns that nobody else can use the root (see tests/test_lab.py)
@pytest.mark.filterwarnings('ignore:.*holds only its owner')
def test_group_shared_root_is_explicit(tmp_path):
    root = Root(str(tmp_path / 'g'), shared='group')
    assert stat.S_IMODE(os.stat(root.path).st_mode) == 0o2770
    assert root.unsafe_reason() is None
    private = Root(str(tmp_path / 'p'))
    os.chmod(private.path, 0o770)
    assert 'group-writable but the root is not in group-shared mode' in private.unsafe_reason()


def test_root_that_is_a_file(tmp_path):
    path = tmp_path / 'afile'
    path.write_text('x')
    with pytest.raises(hi.RootError, match='is a file, not a directory'):
        Root(str(path))


def test_root_in_a_foreign_nonempty_directory(tmp_path):
    (tmp_path / 'mine.txt').write_text('precious')
    with pytest.raises(hi.RootError, match='is not empty and is not a hither_fs root'):
        Root(str(tmp_path))
    assert (tmp_path / 'mine.txt').read_text() == 'precious'


@pytest.mark.parametrize('value', ['', '   ', 'a\nb'])
def test_malformed_env_root(monkeypatch, value):
    monkeypatch.setenv('HITHER_FS_ROOT', value)
    with pytest.raises(hi.RootError, match='HITHER_FS_ROOT is set but malformed'):
        Root()


def test_default_root_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv('HITHER_FS_ROOT', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert Root().path == str(tmp_path / '.hither_fs')


def test_unreadable_root(tmp_path):
    """A root this user cannot read is a clear RootError. Permission bits do not bind root,
    so when the tests run as root the check runs in a forked child as the user nobody."""
    import tempfile
    base = tempfile.mkdtemp(prefix='hither-fs-unreadable-')
    os.chmod(base, 0o711)  # nobody may pass through, not list
    path = os.path.join(base, 'u')
    Root(path)
    os.chmod(path, 0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(hi.RootError, match='not readable'):
                Root(path)
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                Root(path)
                message = 'opened'
            except BaseException as exc:  # report whatever happened to the parent
                message = '{}: {}'.format(type(exc).__name__, exc)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        message = os.read(read, 4096).decode()
        os.waitpid(pid, 0)
        assert message.startswith('RootError:') and 'not readable' in message, message
    finally:
        os.chmod(path, 0o700)
        import shutil
        shutil.rmtree(base)


def test_failed_atomic_write_leaves_old_file(tmp_path):
    path = str(tmp_path / 'f.json')
    atomic_write(path, lambda f: f.write(b'{"v": 1}'))

    def explode(f):
        f.write(b'{"v": 2, half')
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError):
        atomic_write(path, explode)
    assert read_json(path) == {'v': 1}
    assert os.listdir(tmp_path) == ['f.json']


def test_damaged_json_is_reported_with_its_path(tmp_path):
    path = tmp_path / 'state.json'
    path.write_text('{"status": "fini')
    with pytest.raises(CorruptFileError, match='state.json: not valid JSON'):
        read_json(str(path))


def test_waiting_costs_next_to_no_cpu(root_path, parallel):
    with hi.Config(job_handler=parallel(1)):
        add.run(x=1, y=1).wait(timeout=30)  # workers up
        job = sleepy.run(seconds=1.5, result=7)
        cpu0 = time.process_time()
        assert job.wait(timeout=30) == 7
        spent = time.process_time() - cpu0
    assert spent < 0.15, 'waiting 1.5 s cost {:.3f} CPU seconds'.format(spent)


@pytest.mark.filterwarnings('ignore:.*holds only its owner')
@pytest.mark.parametrize('umask', [0o022, 0o077, 0o000])
def test_group_shared_root_stays_group_writable_whatever_the_umask(tmp_path, umask):
    """Every directory a group-shared root grows is setgid 2770 and every file 0660
    (so the lab's other members can add jobs, take locks and read results);
    a private root is 0700/0600 - under any umask."""
    from jobfuncs import echo
    import numpy as np
    from hither_fs import codeenv
    for shared, dir_mode, file_mode in (('group', 0o2770, 0o660), ('private', 0o700, 0o600)):
        old = os.umask(umask)
        try:
            root = Root(str(tmp_path / shared), shared=shared)
            with hi.Config(root=root.path, job_cache=hi.JobCache()):
                assert list(echo.run(x=np.arange(3)).wait()) == [0, 1, 2]
            codeenv.materialize_runtime(root)  # the hither_fs a container job imports: every member's
        finally:
            os.umask(old)
        for dirpath, dirnames, filenames in os.walk(root.path):
            assert stat.S_IMODE(os.stat(dirpath).st_mode) == dir_mode, dirpath
            for name in filenames:
                path = os.path.join(dirpath, name)
                assert stat.S_IMODE(os.stat(path).st_mode) == file_mode, path
        assert root.unsafe_reason() is None


def test_read_only_commands_do_not_create_roots(tmp_path):
    from conftest import run_python
    missing = str(tmp_path / 'typo')
    for args in (['ls'], ['fsck'], ['workers', 'ls'], ['show', '0123456789abcdef']):
        proc = run_python('import sys, hither_fs.cli as c; sys.exit(c.main(sys.argv[1:]))', '--root', missing, *args)
        assert proc.returncode == 2 and 'is not a hither_fs root' in proc.stderr, (args, proc.stderr)
    assert not os.path.exists(missing)


def test_a_record_read_cut_short_is_read_again_damage_is_reported_at_once(tmp_path, monkeypatch):
    """A node whose attribute cache still holds the length of the file a rename replaced
    reads the new record cut short (the test cluster's FUSE mounts do, for a second). Here
    that stale read is a fake: the first read returns the record's first 20 bytes."""
    from hither_fs.runtime import files
    path = str(tmp_path / 'state.json')
    files.write_json(path, {'status': 'finished', 'result': {'value': 41}})
    real, reads, pauses = files.read_bytes, [], []

    def stale_once(p, limit=None):
        data, st = real(p, limit)
        reads.append(p)
        return (data[:20], st) if len(reads) == 1 else (data, st)
    monkeypatch.setattr(files, 'read_bytes', stale_once)
    monkeypatch.setattr(files.time, 'sleep', pauses.append)
    assert files.read_json(path)['result'] == {'value': 41}
    assert len(reads) == 2 and pauses == [files.REREAD_PAUSES[0]]
    with open(path, 'w') as f:
        f.write('{"status": oops}\n')  # damaged inside, not cut short: no second read
    with pytest.raises(hi.CorruptFileError, match='not valid JSON'):
        files.read_json(path)
    assert len(reads) == 3 and len(pauses) == 1


def test_a_record_is_read_whole_whatever_its_size_says(tmp_path):
    """Reads ask for the size ``fstat`` gave, plus one byte (a read allocates what it asks
    for): a file that grew since is still read to its end, and so is one over a megabyte."""
    from hither_fs.runtime import files
    for size in (0, 1, 4095, (1 << 20) - 1, 1 << 20, (3 << 20) + 7):
        path = str(tmp_path / 'f{}'.format(size))
        with open(path, 'wb') as f:
            f.write(os.urandom(size))
        data, st = files.read_bytes(path)
        assert data == open(path, 'rb').read() and st.st_size == size
    path = str(tmp_path / 'growing')
    with open(path, 'wb') as f:
        f.write(b'x' * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(path, 'ab') as f:
            f.write(b'y' * 5000)  # after the fstat that said 100 bytes
        assert files._read_rest(fd, 100) == b'x' * 100 + b'y' * 5000
    finally:
        os.close(fd)
    assert files.read_text_tail(path, limit=10) == 'y' * 10


def test_a_record_read_short_before_its_end_is_read_on(tmp_path, monkeypatch):
    """A network or FUSE file system may return fewer bytes than asked before the end of a
    file (a server's read size): faked here, reads of at most 4 KiB."""
    from hither_fs.runtime import files
    path = tmp_path / 'state.json'
    data = b'{"pad": "' + b'x' * 10000 + b'"}'
    path.write_bytes(data)
    monkeypatch.setattr(files.os, 'read', lambda fd, n, real=os.read: real(fd, min(n, 4096)))
    assert files.read_bytes(str(path))[0] == data

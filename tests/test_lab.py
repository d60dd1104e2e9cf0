"""A root a lab shares, tried with three real users: hither-a and hither-b in group
hither-lab, hither-c outside it.

tests/run.sh creates the users and the group, installs hither_fs for them in a
virtualenv the superuser owns (HITHER_FS_LAB_PYTHON: a worker trusts only code
that nobody but the submitter, itself or the root's group can change, and that
holds for hither_fs's own files too), and runs this file as root, which acts
as each user with `runuser`. Elsewhere these tests skip, or fail under CI.
"""

import json
import os
import shutil
import subprocess
import textwrap
import uuid

import pytest

from conftest import missing_infrastructure

A, B, C, GROUP = 'hither-a', 'hither-b', 'hither-c', 'hither-lab'
PYTHON = os.environ.get('HITHER_FS_LAB_PYTHON', '')
BASE = '/tmp/hither_fs-lab-tests'

# The README's recipe ("Share a root with your lab"), as A runs it.
RECIPE = "import hither_fs as hi; hi.Root({root!r}, shared='hither-lab')"

SUBMIT = '''
import json, sys
import hither_fs as hi
{imports}

with hi.Config(root={root!r}, job_handler=hi.RemoteJobHandler(compute_resource_id='lab')):
    job = {call}
    try:
        print(json.dumps({{'id': job.id, 'result': job.wait(timeout=90)}}))
    except hi.JobError as exc:
        print(json.dumps({{'id': job.id, 'error': str(exc)}}))
'''

FUNCTION = '''
import hither_fs as hi

@hi.function({name!r}, '0.1.0')
def {name}(x):
    {body}
'''

# What hither-c plants where hither-a's code is imported from: it would leave a marker.
PLANTED = '''
import os
open({marker!r}, 'w').write('hither-c was here')
def value(x):
    return 667
'''


@pytest.fixture(scope='module')
def lab():
    import grp
    import pwd
    if os.getuid() != 0 or not PYTHON:
        missing_infrastructure('the lab tests run as root with HITHER_FS_LAB_PYTHON set: run them with tests/run.sh')
    try:
        members = grp.getgrnam(GROUP).gr_mem
        for user in (A, B, C):
            pwd.getpwnam(user)
    except KeyError as exc:
        missing_infrastructure('user or group {} is missing: tests/run.sh creates them'.format(exc))
    assert A in members and B in members and C not in members, 'tests/run.sh sets the group up so'
    assert pwd.getpwnam(A).pw_name == grp.getgrgid(pwd.getpwnam(A).pw_gid).gr_name, 'useradd -U: user-private groups'
    base = os.path.join(BASE, uuid.uuid4().hex[:8])
    os.makedirs(base)
    os.chmod(BASE, 0o1777)
    os.chmod(base, 0o1777)  # like a cluster's scratch space: anyone may create, only owners delete
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_user(user, *args, code=None, env=None, timeout=120, wait=True):
    import pwd
    home = pwd.getpwnam(user).pw_dir
    cmd = ['runuser', '-u', user, '--', 'env', '-i', 'HOME=' + home, 'USER=' + user, 'LANG=C.UTF-8',
           'PATH=/usr/bin:/bin'] + ['{}={}'.format(k, v) for k, v in (env or {}).items()]
    cmd += [PYTHON] + (['-c', code] if code is not None else list(args))
    if not wait:
        return subprocess.Popen(cmd, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=home, capture_output=True, text=True, timeout=timeout)


def mkdir_as(user, path, mode):
    proc = as_user(user, code='import os; os.mkdir({!r}); os.chmod({!r}, {})'.format(path, path, mode))
    assert proc.returncode == 0, proc.stderr


def write_as(user, path, text):
    proc = as_user(user, code='open({!r}, "w").write({!r})'.format(path, text))
    assert proc.returncode == 0, proc.stderr


def make_lab_root(lab):
    root = os.path.join(lab, 'root')
    proc = as_user(A, code=RECIPE.format(root=root))
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return root


def worker_of_b(root, extra_env=None):
    """B's worker serving the lab's compute resource queue (exits after 30 s without work)."""
    return as_user(B, '-m', 'hither_fs', 'worker', '--root', root, '--queue', 'resource-lab', '--idle-timeout', '30',
                   env=extra_env, wait=False)


def submit_as_a(root, code_dir, module, name, extra_path=None):
    path_line = 'sys.path.insert(0, {!r})'.format(extra_path) if extra_path else ''
    script = os.path.join(code_dir, 'submit_{}.py'.format(name))
    write_as(A, script, SUBMIT.format(root=root, imports='{}\nsys.path.insert(0, {!r})\nfrom {} import {}'.format(
        path_line, code_dir, module, name) if module else '', call='{}.run(x=333)'.format(name)))
    proc = as_user(A, script, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def stop(worker):
    worker.terminate()
    try:
        worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()


def test_a_lab_root_serves_every_member_and_shuts_out_the_rest(lab):
    root = make_lab_root(lab)
    code = os.path.join(lab, 'a-code')
    mkdir_as(A, code, 0o755)
    write_as(A, os.path.join(code, 'labfuncs.py'), FUNCTION.format(name='triple_plus', body='return 3 * x + 2'))
    worker = worker_of_b(root)
    try:
        out = submit_as_a(root, code, 'labfuncs', 'triple_plus')
    finally:
        stop(worker)
    assert out.get('result') == 1001, out
    # who submitted it and who ran it, in the record and in hither-fs show
    shown = json.loads(as_user(A, '-m', 'hither_fs', 'show', '--root', root, out['id']).stdout)
    assert (shown['spec']['submitted_by']['user'], shown['spec']['submitted_by']['uid']) == (A, uid(A))
    assert (shown['state']['runtime']['user'], shown['state']['runtime']['uid']) == (B, uid(B))
    # C can neither read nor write anything in it
    for code in ('import os; os.listdir({!r})'.format(root),
                 'open({!r}).read()'.format(os.path.join(root, 'root.json')),
                 'open({!r}, "w")'.format(os.path.join(root, 'jobs', 'planted'))):
        proc = as_user(C, code=code)
        assert proc.returncode != 0 and 'PermissionError' in proc.stderr, code
    proc = as_user(C, code='import hither_fs as hi; hi.Root({!r})'.format(root))
    assert proc.returncode != 0 and 'shared with group hither-lab, which this user is not in' in proc.stderr


def uid(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


@pytest.mark.parametrize('case', ['script', 'module', 'sys.path', 'added to sys.path'])
def test_code_hither_c_can_change_never_runs(lab, case):
    """A's function where hither-c can add a module (a sticky world-writable scratch directory, a
    directory anyone may write, a directory on the worker's sys.path): the job fails naming the
    directory and its mode, and the module hither-c planted there (imported only inside the
    function) never runs."""
    root = make_lab_root(lab)
    scratch = os.path.join(lab, 'scratch-' + case.replace('.', ''))
    marker = os.path.join(lab, 'marker-' + case.replace('.', ''))
    os.mkdir(scratch)
    os.chmod(scratch, 0o1777 if case == 'script' else 0o777)
    write_as(C, os.path.join(scratch, 'helper.py'), PLANTED.format(marker=marker))
    body = 'import helper\n    return helper.value(x)'
    extra_env = None
    if case == 'added to sys.path':  # A's own module puts the scratch directory on sys.path as it loads
        code = os.path.join(lab, 'a-code-added')
        mkdir_as(A, code, 0o755)
        write_as(A, os.path.join(code, 'addedmod.py'), 'import sys\nsys.path.insert(0, {!r})\n'.format(scratch) +
                 FUNCTION.format(name='planted_added', body=body))
        worker = worker_of_b(root)
        try:
            out = submit_as_a(root, code, 'addedmod', 'planted_added')
        finally:
            stop(worker)
        assert 'result' not in out, out
        assert 'UntrustedCodeError: refusing to import from {}: {} is writable by every user (mode 777)'.format(
            scratch, scratch) in out['error'], out
        assert not os.path.exists(marker)
        return
    if case == 'script':  # the function is in the submitting script itself, in the sticky scratch directory
        script = os.path.join(scratch, 'in_scratch.py')
        write_as(A, script, FUNCTION.format(name='in_scratch', body=body) + SUBMIT.format(
            root=root, imports='', call='in_scratch.run(x=333)'))
        worker = worker_of_b(root)
        try:
            proc = as_user(A, script, timeout=150)
        finally:
            stop(worker)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout.splitlines()[-1])
        where = scratch
        mode = '1777'
    else:
        code = os.path.join(lab, 'a-code-' + case.replace('.', ''))
        if case == 'module':  # a module in a directory anyone may write
            code = scratch
        else:
            mkdir_as(A, code, 0o755)
            extra_env = {'PYTHONPATH': scratch}  # B's worker has the scratch directory on its sys.path
        name = 'planted_' + case.replace('.', '')
        write_as(A, os.path.join(code, name + 'mod.py'), FUNCTION.format(name=name, body=body))
        worker = worker_of_b(root, extra_env)
        try:
            out = submit_as_a(root, code, name + 'mod', name)
        finally:
            stop(worker)
        where, mode = scratch, '777'
    assert 'result' not in out, out
    assert 'refusing to run job' in out['error'] and '{} is writable by every user (mode {})'.format(
        where, mode) in out['error'], out
    assert not os.path.exists(marker)  # hither-c's code never ran


def test_a_cache_hither_c_can_write_is_refused(lab):
    cache = os.path.join(lab, 'open-cache')
    os.mkdir(cache)
    os.chmod(cache, 0o777)
    proc = as_user(A, code='import hither_fs as hi; hi.JobCache({!r})'.format(cache))
    assert proc.returncode != 0
    assert 'refusing the job cache at {}: {} is writable by every user (mode 777)'.format(cache, cache) in proc.stderr
    # a cache of the lab's, made by A: B may use it, C cannot plant anything in it
    lab_cache = os.path.join(lab, 'lab-cache')
    code = textwrap.dedent('''
        import os, grp
        os.mkdir({c!r}); os.chown({c!r}, -1, grp.getgrnam('hither-lab').gr_gid); os.chmod({c!r}, 0o2770)
        import hither_fs as hi; hi.JobCache({c!r})
    ''').format(c=lab_cache)
    assert as_user(A, code=code).returncode == 0
    assert as_user(B, code='import hither_fs as hi; hi.JobCache({!r})'.format(lab_cache)).returncode == 0
    proc = as_user(C, code='open({!r}, "w")'.format(os.path.join(lab_cache, 'planted.json')))
    assert proc.returncode != 0 and 'PermissionError' in proc.stderr
    # C makes the cache directory first (in a sticky shared directory), as A's: A refuses it
    taken = os.path.join(lab, 'taken-cache')
    mkdir_as(C, taken, 0o755)
    proc = as_user(A, code='import hither_fs as hi; hi.JobCache({!r})'.format(taken))
    assert proc.returncode != 0 and 'belongs to user {} ({})'.format(uid(C), C) in proc.stderr


def test_the_recipe_in_a_directory_an_admin_made_for_the_lab(lab):
    import grp
    root = os.path.join(lab, 'admin-made')
    os.mkdir(root)
    os.chown(root, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(root, 0o2770)
    proc = as_user(A, code=RECIPE.format(root=root))
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    # a root's sharing is chosen when it is made: asking for another one is an error, not a surprise
    proc = as_user(A, code="import hither_fs as hi; hi.Root({!r}, shared='private')".format(root))
    assert proc.returncode != 0 and 'exists already, shared with group hither-lab' in proc.stderr


def test_a_group_root_of_a_private_group_is_reported(lab):
    proc = as_user(A, code="import hither_fs as hi; hi.Root({!r}, shared='group')".format(
        os.path.join(lab, 'private-group-root')))
    assert proc.returncode == 0
    assert "is shared with group hither-a, which holds only its owner: nobody else can use it" in proc.stderr
    proc = as_user(C, code="import hither_fs as hi; hi.Root({!r}, shared='hither-lab')".format(
        os.path.join(lab, 'not-my-group')))
    assert proc.returncode != 0 and "you are not in group 'hither-lab'" in proc.stderr


LAB_CACHE_USE = '''
import json, sys
sys.path.insert(0, {code_dir!r})
import hither_fs as hi
from ramp import ramp
with hi.Config(root={root!r}, job_cache=hi.JobCache({cache!r})):
    job = ramp.run(x=5)
    print(json.dumps({{'hit': type(job).__name__ == 'CacheHit', 'result': job.wait().tolist()}}))
'''


def test_members_with_private_roots_share_a_lab_caches_array_results(lab):
    """A's result array, recorded in the lab's cache from A's private root, answers B's job
    and A's again: it goes into the lab's store as a file the group can read (a hard link
    would keep A's private file: B missed, ran it again and replaced it, then A missed...)."""
    cache = os.path.join(lab, 'results-cache')
    code = textwrap.dedent('''
        import os, grp
        os.mkdir({c!r}); os.chown({c!r}, -1, grp.getgrnam('hither-lab').gr_gid); os.chmod({c!r}, 0o2770)
    ''').format(c=cache)
    assert as_user(A, code=code).returncode == 0
    code_dir = os.path.join(lab, 'code-ramp')
    mkdir_as(A, code_dir, 0o755)
    write_as(A, os.path.join(code_dir, 'ramp.py'),
             FUNCTION.format(name='ramp', body="return __import__('numpy').arange(x) * 1.5"))
    for user, hit in ((A, False), (B, True), (A, True), (B, True)):
        script = LAB_CACHE_USE.format(code_dir=code_dir, root=os.path.join(lab, 'root-' + user), cache=cache)
        proc = as_user(user, code=script)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1]) == {'hit': hit, 'result': [0.0, 1.5, 3.0, 4.5, 6.0]}, user

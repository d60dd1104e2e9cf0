"""A real Jupyter notebook runs a hither function on local worker processes.

The notebook is written with nbformat and executed by nbclient in an ipykernel
kernel of this interpreter. Its functions live in the kernel's ``__main__``,
which has no script file, so they reach the workers as shipped source text
(hither_fs.shipping). Needs nbclient, nbformat and ipykernel: without them the
test skips, or fails under CI.
"""


from conftest import jupyter_kernel

CELLS = [
    'import math\nimport numpy as np\nimport hither_fs as hi',
    'SCALE = 3',
    'def helper(x):\n    return x * SCALE',
    ('class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n'
     '    def norm(self):\n        return math.hypot(self.x, self.y)'),
    ("@hi.function('nb_scaled', '0.1.0')\ndef nb_scaled(x):\n"
     "    return float(helper(np.float64(x)) + Point(3, 4).norm())"),
    # what the workers will get: the kernel's __main__ has no file, and the cells' source is found
    ('from hither_fs.shipping import needs_shipping, shipped_source\n'
     'assert needs_shipping(nb_scaled.__wrapped__)\n'
     "print(shipped_source(nb_scaled.__wrapped__, 'nb_scaled'))"),
    # the handler and Config options come from the test (local workers, Slurm, a container)
    ('with hi.Config(root=ROOT, job_handler=HANDLER, **OPTIONS):\n'
     '    jobs = [nb_scaled.run(x=x) for x in range(4)]\n'
     '    hi.wait(240)\n'
     '    results = [job.get_result() for job in jobs]\n'
     'assert results == [5.0, 8.0, 11.0, 14.0], results\n'
     "print('notebook results:', results)"),
    # a cell run again after an edit redefines the function (a notebook has no file to tell them apart)
    ("@hi.function('nb_scaled', '0.1.0')\ndef nb_scaled(x):\n    return -x\n"
     "print('redefined:', nb_scaled(2))"),
]


def run_notebook(tmp_path, monkeypatch, setup: str, options: str = '{}') -> None:
    """Write the notebook, with ``setup`` (which sets HANDLER) and Config ``options``, run it in a real
    kernel, and check what it printed."""
    nbformat, NotebookClient = jupyter_kernel(tmp_path, monkeypatch)

    root = str(tmp_path / 'root')
    nb = nbformat.v4.new_notebook()
    first = 'ROOT = {!r}\nOPTIONS = {}'.format(root, options)
    nb.cells = [nbformat.v4.new_code_cell(c) for c in [first] + CELLS[:-2] + [setup] + CELLS[-2:]]
    nbformat.validate(nb)
    nbformat.write(nb, str(tmp_path / 'demo.ipynb'))
    nb = nbformat.read(str(tmp_path / 'demo.ipynb'), as_version=4)
    NotebookClient(nb, timeout=120, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()  # a failing cell raises here

    shipped = ''.join(o.get('text', '') for o in nb.cells[-4].outputs)
    assert "@hi.function('nb_scaled', '0.1.0')" in shipped and 'class Point:' in shipped
    assert 'SCALE = 3' in shipped and 'import numpy as np' in shipped
    printed = ''.join(o.get('text', '') for o in nb.cells[-2].outputs)
    assert 'notebook results: [5.0, 8.0, 11.0, 14.0]' in printed
    assert 'redefined: -2' in ''.join(o.get('text', '') for o in nb.cells[-1].outputs)


def test_notebook_runs_a_hither_function_on_local_workers(tmp_path, monkeypatch):
    run_notebook(tmp_path, monkeypatch, 'HANDLER = hi.ParallelJobHandler(2)')

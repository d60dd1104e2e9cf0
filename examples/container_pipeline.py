# The pipeline example from the hither docs, run in containers: solve x A = B,
# with x also found from its roots. hi.Config(container=True) runs each
# function in the image its @hi.container names (Singularity/Apptainer; see
# README "Containers"). The image needs only python3 and numpy.
#
# HITHER_FS_EXAMPLE_IMAGE replaces the docs' image, e.g. with a local sandbox
# directory or .sif file when there is no internet access.
import os

import numpy as np

import hither_fs as hi

IMAGE = os.environ.get('HITHER_FS_EXAMPLE_IMAGE', 'docker://jsoules/simplescipy:latest')


@hi.function('mult', '0.1.0')
@hi.container(IMAGE)
def mult(x, y):
    return x * y


@hi.function('invert', '0.1.0')
@hi.container(IMAGE)
def invert(x):
    # You should probably be more careful about types than this in real code
    if isinstance(x, np.ndarray):
        return np.linalg.inv(x)
    return (1/x)


@hi.function('dot', '0.1.0')
@hi.container(IMAGE)
def dot(x, y):
    return np.dot(x, y)


jh = hi.ParallelJobHandler(num_workers=2)
with hi.Config(job_handler=jh, container=True):
    # solve for x in xA = B, with extra computation to find x from its roots
    xroot = np.array([4, 5])
    a = np.array([[3, 4], [5, 6]])
    b = np.array([173, 214])

    ainv_job = invert.run(x=a)
    product_job = dot.run(x=b, y=ainv_job)
    x_job = mult.run(x=xroot, y=xroot)

    x = x_job.wait()
    product = product_job.wait()

    assert np.allclose(x, product)
    print('x =', x, ' product =', product)
    print('ran in', x_job.get_runtime_info()['image'])

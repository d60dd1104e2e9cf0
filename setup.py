from setuptools import find_packages, setup

setup(
    name="hither_fs",
    version="0.1.0",
    description="hither functions and jobs on a shared directory: local workers, Slurm, Singularity",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hither_fs", "hither_fs.*"]),
    package_data={"hither_fs": ["templates/*.sbatch", "py.typed"]},
    python_requires=">=3.9",
    install_requires=["numpy", "filelock>=3.12", "psutil", "spython", "tqdm>=4.61"],
    extras_require={"test": ["pytest", "nbclient", "nbformat", "ipykernel", "ipywidgets", "mypy"]},
    entry_points={"console_scripts": ["hither-fs=hither_fs.cli:main"]},
)

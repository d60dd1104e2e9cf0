"""numpy, imported the first time one of its names is used.

It is a third of the package's import time, and commands that never meet an
array (``hither-fs ls``, ``cancel``, ``workers``) need not pay for it. Whatever
uses ``np.`` at run time imports it then; afterwards its names are plain
attribute reads of this object.
"""

import importlib
from typing import Any


class _Numpy:
    def __getattr__(self, name: str) -> Any:
        numpy = importlib.import_module("numpy")
        self.__dict__.update(vars(numpy))  # from now on found without this method
        return getattr(numpy, name)


np: Any = _Numpy()

"""``actstore.kernels``: the Triton kernels, one op per file, whose sources live in the
repository's top-level ``kernels/`` folder.

That folder has no ``__init__.py`` on purpose (setup.py says why): a regular package named
``kernels`` at the repository root shadowed Hugging Face's ``kernels``, which transformers >= 5
imports. This module stands in for the package's ``__init__``: setting ``__path__`` makes it a
package whose submodules (``actstore.kernels.topk_encode``...) are the folder's files.

- From a clone (editable install, or the source tree on ``sys.path``) the files are in
  ``<root>/kernels``. setuptools' editable finder resolves only packages that have an
  ``__init__.py``, which is why this module exists.
- From a wheel, setup.py's ``package_dir`` copied them to ``actstore/kernels/`` beside this file.
"""

import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
__path__ = [
    p
    for p in (_os.path.join(_HERE, "kernels"), _os.path.join(_os.path.dirname(_HERE), "kernels"))
    if _os.path.isfile(_os.path.join(p, "topk_encode.py"))
][:1]

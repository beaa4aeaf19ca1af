"""Sphinx configuration of scratchlm's docs site.

Build it (offline, math included) with::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

MathJax is not fetched from a CDN: the ``sphinx-mathjax-offline`` package ships MathJax 3 and copies it
into ``_static/mathjax``, so no page loads anything from the network.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # scratchlm from the checkout, installed or not
sys.path.insert(0, os.path.abspath("_ext"))  # docs/_ext

project = "scratchlm"
author = "scratchlm contributors"
copyright = "scratchlm contributors"  # noqa: A001

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 from a PyPI package, copied into _static (no CDN)
    "myst_parser",
    "sphinxarg.ext",
    "scratchlm_docs",  # docs/_ext: house-style blocks as literal blocks; names resolved as the code imports them
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The README and docs/*.md are GitHub markdown; MyST reads them. Headings get anchors for links.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_typehints = "description"
# Defaults as written in the source (``xp=numpy``), not their repr (a module's repr names this machine's paths).
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = "scratchlm"
html_static_path = []

# Nitpicky mode: a cross-reference that points to nothing is an error. Only names outside scratchlm
# (NumPy, CuPy, the standard library's typing aliases) may be ignored here.
nitpicky = True
nitpick_ignore = [
    ("py:class", "Array"),  # scratchlm.backend.Array = typing.Any: numpy.ndarray or cupy.ndarray, in type hints
]
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|cupy|cp|mpi4py|numba|h5py|tensorflow|keras|torch|transformers|tqdm)(\..*)?"),
    # the standard library (no intersphinx: the build is offline)
    (r"py:.*", r"(pathlib|os|collections\.abc|abc|types|typing|argparse|io|threading|concurrent\.futures)\..*"),
    (r"py:class", r"(Path|Any|Callable|Iterator|Iterable|Mapping|Sequence)"),
]

"""Sphinx configuration for bayeskit's documentation site.

Sphinx (rather than MkDocs) because the API reference comes from numpydoc
docstrings full of reStructuredText math, which Sphinx's autodoc and
napoleon render as written, and because myst-nb executes the tutorials,
which stay percent-cell ``.py`` scripts, through jupytext at build time, so
a broken tutorial breaks the build.  Build with ``-W --keep-going`` (CI does).
"""

import os
import shutil
import sys
from pathlib import Path

import bayeskit

DOCS = Path(__file__).parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "bayeskit"
author = "the bayeskit developers"
copyright = "2026, the bayeskit developers"
release = version = bayeskit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",  # the docstrings' examples: `sphinx -b doctest` runs them (CI does)
    "sphinx_copybutton",
    "myst_nb",
    "apipages",
]

# --- the tutorials: copied from tutorials/ at each build and executed in quick mode
TUTORIALS = DOCS / "tutorials"


def copy_tutorials():
    """The scripts of ``tutorials/`` as the pages' sources (jupytext reads their ``# %%`` cells)."""
    TUTORIALS.mkdir(exist_ok=True)
    for script in sorted((ROOT / "tutorials").glob("[0-9]*.py")):
        target = TUTORIALS / script.name
        if not target.exists() or target.read_bytes() != script.read_bytes():  # keep the execution cache
            shutil.copyfile(script, target)


copy_tutorials()
# quick sizes (the same code path as the full run); BAYESKIT_DOCS_FULL=1 renders the full-size figures
if os.environ.get("BAYESKIT_DOCS_FULL") != "1":
    os.environ["BAYESKIT_QUICK"] = "1"
os.environ.setdefault("CI", "true")  # no progress bars in the executed cells
# every tutorial writes its figures here; tutorials/gallery.md shows them all (it is read after the tutorials)
os.environ.setdefault("BAYESKIT_OUT", str(DOCS / "_build" / "figures"))

nb_custom_formats = {".py": ["tutorial_format.read_percent_script", {}]}
nb_execution_mode = os.environ.get("BAYESKIT_DOCS_EXECUTE", "cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]

source_suffix = {".md": "myst-nb", ".py": "myst-nb"}
exclude_patterns = ["_build", "conf.py", "_ext", "jupyter_execute", ".jupyter_cache", "**/__pycache__"]

# --- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
html_theme = "furo"
html_title = f"bayeskit {release}"
html_static_path = []

# an example whose run does not mix fails the doctest build instead of printing a warning
doctest_global_setup = "import warnings\nimport bayeskit\nwarnings.simplefilter('error', bayeskit.HealthWarning)"

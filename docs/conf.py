"""Sphinx configuration of the documentation site.

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html      # about a minute

Pages: the Markdown guides of this folder (MyST), the notebooks of ../notebooks rendered as committed
(stripped of outputs: never executed here unless MEANFIELD_DOCS_EXECUTE=1, which runs them at their small
size), and the API reference from the docstrings (autodoc, numpy style through napoleon). Everything
builds offline: no intersphinx, no remote theme assets.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # build from a checkout without installing

import meanfield  # noqa: E402

project = "meanfield + hermite"
author = "the meanfield-hermite authors"
release = version = meanfield.__version__
copyright = "the meanfield-hermite authors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "demo.png"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
default_role = "py:obj"  # `name` in a docstring links to the object when it is documented
suppress_warnings = ["myst.header",  # the guides start their sections at level 2 in places
                    "ref.python"]  # an attribute name shared by two result records (e.g. readout) is ambiguous

# API reference
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_param = False  # parameter types as text: "name, callable or Activation" is prose
napoleon_use_ivar = True
napoleon_custom_sections = [("Truths used", "notes_style"), ("Formula", "notes_style"),
                            ("Source", "notes_style"), ("Sources", "notes_style")]



def _plain_text_bars(app, what, name, obj, options, lines):
    """The docstrings are plain text with formulas (|rho|, |x - y|): a bar is a character, never a
    reStructuredText substitution. Escape bars outside literal blocks and doctests."""
    literal = False
    indent = 0
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        cur = len(line) - len(stripped)
        if literal and stripped and cur <= indent:
            literal = False
        if not literal and not stripped.startswith((">>>", "...")) and "|" in line:
            lines[i] = line.replace("|", "\\|")
        if not literal and stripped.endswith("::"):
            literal, indent = True, cur


def _copy_notebooks(app):
    """The notebooks live in ../notebooks and Sphinx reads only its source folder: copy them to _notebooks
    (ignored by git) before the sources are read."""
    dest = DOCS / "_notebooks"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, dest / nb.name)


_ATTRIBUTE_DOCS: dict = {}


def _keep_attribute_docs(app, what, name, obj, options, lines):
    """Attribute doc comments are prose ("#: draws its own weights (None: the simulator's width)"), but
    napoleon reads the text before a first colon as a type: keep them as written (restored after napoleon)."""
    if what in ("attribute", "data", "property"):
        _ATTRIBUTE_DOCS[name] = list(lines)


def _restore_attribute_docs(app, what, name, obj, options, lines):
    if what in ("attribute", "data", "property") and name in _ATTRIBUTE_DOCS:
        lines[:] = _ATTRIBUTE_DOCS.pop(name)


def setup(app):
    app.connect("builder-inited", _copy_notebooks)
    app.connect("autodoc-process-docstring", _keep_attribute_docs, priority=100)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _restore_attribute_docs, priority=550)
    app.connect("autodoc-process-docstring", _plain_text_bars, priority=600)


# notebooks: rendered as committed; MEANFIELD_DOCS_EXECUTE=1 executes them (at the small size)
if os.environ.get("MEANFIELD_DOCS_EXECUTE") == "1":
    os.environ.setdefault("MEANFIELD_NOTEBOOK_SIZE", "small")
    nb_execution_mode = "force"
else:
    nb_execution_mode = "off"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"meanfield + hermite {release}"
html_static_path: list = []
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}

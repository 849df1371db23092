"""
Sphinx configuration of Clustron's documentation.

Build it (warnings are errors) with::

    tox -e docs
    # or, from a checkout, without installing:
    PYTHONPATH=. sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The project root, so that autodoc imports the checkout's clustron when it is
# not installed, and the local extensions in _ext/.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "Clustron"
author = "The Clustron authors"
copyright = "the Clustron authors"
release = "0.1.0"
version = "0.1"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
    "epytext",
    "zopeinterfaces",
    "pagetree",
    "publicapi",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]
templates_path: list[str] = []

# Markdown pages (MyST): fenced ```{directive}``` blocks, ::: fences, and
# anchors for headings so that [text](page.md#heading) links resolve.
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# API reference.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autoclass_content = "both"
# Default role for `text` in docstrings: a Python cross-reference.
default_role = "py:obj"
add_module_names = False
python_use_unqualified_type_names = True

# Cross-references to Twisted, zope.interface, attrs and the standard library
# that cannot be resolved offline render as code; nitpicky mode (-n) would
# report each one, so it stays off.
nitpicky = False

html_theme = "alabaster"
html_title = "Clustron"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Clustering and messaging for Twisted",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}


def _skip_loggers(app, what, name, obj, skip, options):  # type: ignore[no-untyped-def]
    """
    Leave module-level C{twisted.logger.Logger} instances (C{log}) out of
    the reference: they are plumbing, not API.
    """
    from twisted.logger import Logger

    if isinstance(obj, Logger):
        return True
    return None


def setup(app):  # type: ignore[no-untyped-def]
    """
    Project-specific autodoc rules.
    """
    app.connect("autodoc-skip-member", _skip_loggers)

"""
A Sphinx extension with one directive, C{publicnames}: a table of the names a
package re-exports in its C{__all__}, each linked to where the reference
documents it, with the first line of its docstring::

    .. publicnames:: clustron

autodoc leaves re-exported names out of C{automodule} (they belong to the
modules that define them), so a curated top-level API would otherwise show
nothing but its docstring. Non-callable values (C{__version__}) are shown
with their value.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from epytext import convert_inline
from sphinx.util.docutils import SphinxDirective


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    paragraph = doc.split("\n\n", 1)[0]
    return " ".join(convert_inline(" ".join(paragraph.split())).split())


def public_rows(module: Any) -> list[tuple[str, str, str]]:
    """
    @return: C{(name, reference, summary)} for each name of the module's
        C{__all__}, in that order.
    """
    rows = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        home = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(home, str) and isinstance(qualname, str) and callable(obj):
            is_exception = isinstance(obj, type) and issubclass(obj, BaseException)
            role = "py:exc" if is_exception else "py:obj"
            reference = f":{role}:`{home}.{qualname}`"
            summary = _summary(obj)
        else:
            reference = f"``{name} = {obj!r}``"
            summary = ""
        rows.append((name, reference, summary))
    return rows


class PublicNames(SphinxDirective):
    """
    C{.. publicnames:: package}: the package's public names.
    """

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        """
        Import the package and parse the generated table.
        """
        name = self.arguments[0]
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise self.error(f"publicnames: cannot import {name}: {e!r}") from None
        rows = public_rows(module)
        if not rows:
            raise self.error(f"publicnames: {name} has no __all__")
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 20 40 40",
            "",
            "   * - Name",
            "     - Defined as",
            "     - Summary",
        ]
        for public, reference, summary in rows:
            lines += [f"   * - ``{public}``", f"     - {reference}", f"     - {summary}"]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<publicnames {name}>"), 0, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    """
    Register the directive.
    """
    app.setup_extension("epytext")
    app.add_directive("publicnames", PublicNames)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

"""
A Sphinx extension that documents zope.interface interfaces.

autodoc does not know zope interfaces: an interface is an instance of
C{InterfaceClass}, not a class, and its methods are C{Method} descriptions
reached with C{iface["name"]}, not attributes. Left alone, C{automodule}
lists an interface as a module-level value and none of its methods.

This extension hides interfaces from autodoc (C{autodoc-skip-member}) and
adds a directive that documents every interface a module defines, in
definition order, as a C{py:class} with its bases, its attributes and its
methods (signatures written without C{self}, as zope.interface declares
them)::

    .. autointerfaces:: clustron.interfaces

Docstrings go through the L{epytext} conversion, like autodoc's.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from epytext import convert
from sphinx.util.docutils import SphinxDirective
from zope.interface import Interface
from zope.interface.interface import InterfaceClass, Method


def _is_interface(obj: Any) -> bool:
    return isinstance(obj, InterfaceClass)


def interfaces_of(module: Any) -> list[InterfaceClass]:
    """
    @return: the interfaces defined (not imported) in C{module}, in
        definition order.
    """
    return [
        value
        for value in vars(module).values()
        if _is_interface(value) and value.__module__ == module.__name__
    ]


def _doc_lines(doc: str | None, indent: str) -> list[str]:
    if not doc:
        return []
    return [indent + line if line else "" for line in convert(inspect.cleandoc(doc).splitlines())]


def interface_lines(iface: InterfaceClass) -> list[str]:
    """
    @return: the reStructuredText that documents one interface.
    """
    lines = [f".. py:class:: {iface.__name__}", f"   :module: {iface.__module__}", ""]
    bases = [base for base in iface.__bases__ if base is not Interface]
    if bases:
        names = ", ".join(f":py:class:`{base.__module__}.{base.__name__}`" for base in bases)
        lines += [f"   Extends {names}.", ""]
    lines += _doc_lines(iface.__doc__, "   ")
    lines.append("")
    for name, description in iface.namesAndDescriptions(all=False):
        if isinstance(description, Method):
            lines.append(f"   .. py:method:: {name}{description.getSignatureString()}")
        else:
            lines.append(f"   .. py:attribute:: {name}")
        lines.append("")
        lines += _doc_lines(description.__doc__, "      ")
        lines.append("")
    return lines


class AutoInterfaces(SphinxDirective):
    """
    C{.. autointerfaces:: module.name}: document the module's interfaces.
    """

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        """
        Import the module and parse the generated description.
        """
        name = self.arguments[0]
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise self.error(f"autointerfaces: cannot import {name}: {e!r}") from None
        lines: list[str] = []
        for iface in interfaces_of(module):
            lines += interface_lines(iface)
        if not lines:
            raise self.error(f"autointerfaces: {name} defines no zope interface")
        content = StringList(lines, source=f"<autointerfaces {name}>")
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(content, 0, container, match_titles=False)
        return container.children


def skip_interfaces(
    app: Any, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """
    The C{autodoc-skip-member} handler: leave interfaces to L{AutoInterfaces}.
    """
    if _is_interface(obj):
        return True
    return None


def setup(app: Any) -> dict[str, Any]:
    """
    Register the directive and the skip rule.
    """
    app.setup_extension("sphinx.ext.autodoc")
    app.setup_extension("epytext")
    app.add_directive("autointerfaces", AutoInterfaces)
    app.connect("autodoc-skip-member", skip_interfaces)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

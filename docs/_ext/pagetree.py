"""
A Sphinx extension with one directive, C{pagetree}: a toctree of the pages
it lists, in that order, followed by every other top-level page of the site
(and every C{<folder>/index} page), sorted by name.

Pages are written by several people; with C{-W} a page that is in no toctree
fails the build, and a glob pattern that matches nothing fails it too. This
directive takes new pages in without either failure::

    .. pagetree::
       :maxdepth: 2

       architecture
       configuration

A page in a sub-folder other than its C{index} is left to the toctree of its
folder's index (or of another page).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def extra_pages(found: set[str], current: str, listed: list[str]) -> list[str]:
    """
    @param found: every document name of the site.
    @param current: the name of the document holding the directive.
    @param listed: the names listed explicitly.
    @return: the other top-level documents and folder indexes, sorted.
    """
    taken = set(listed) | {current}
    extra = []
    for name in found:
        parts = name.split("/")
        top_level = len(parts) == 1 or (len(parts) == 2 and parts[1] == "index")
        if top_level and name not in taken:
            extra.append(name)
    return sorted(extra)


class PageTree(SphinxDirective):
    """
    C{.. pagetree::}: the listed pages, then every other top-level page.
    """

    has_content = True
    option_spec = {"maxdepth": directives.nonnegative_int, "caption": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        """
        Build the toctree directive's text and parse it.
        """
        listed = [line.strip() for line in self.content if line.strip()]
        current = _docname(self.env)
        _holders(self.env).add(current)
        missing = [name for name in listed if name not in self.env.found_docs]
        pages = [name for name in listed if name in self.env.found_docs]
        pages += extra_pages(set(self.env.found_docs), current, listed)
        lines = [".. toctree::"]
        if "maxdepth" in self.options:
            lines.append(f"   :maxdepth: {self.options['maxdepth']}")
        if "caption" in self.options:
            lines.append(f"   :caption: {self.options['caption']}")
        lines.append("")
        lines += [f"   {name}" for name in pages]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=current), 0, container)
        result: list[nodes.Node] = list(container.children)
        if missing:
            result.append(
                self.state.document.reporter.warning(
                    f"pagetree: no such page: {', '.join(missing)}", line=self.lineno
                )
            )
        return result


def _docname(env: Any) -> str:
    current = getattr(env, "current_document", None)
    if current is not None:
        return str(current.docname)
    return str(env.docname)  # Sphinx before 8.2


def _holders(env: Any) -> set[str]:
    """
    The documents that hold a C{pagetree} (kept in the pickled environment).
    """
    holders: set[str] | None = getattr(env, "clustron_pagetree_docs", None)
    if holders is None:
        holders = set()
        env.clustron_pagetree_docs = holders
    return holders


def _outdated(
    app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    """
    C{env-get-outdated}: when pages come or go, the documents that list them
    must be read again, even in an incremental build.
    """
    if added or removed:
        return sorted(_holders(env) - removed)
    return []


def _purge(app: Any, env: Any, docname: str) -> None:
    _holders(env).discard(docname)


def _merge(app: Any, env: Any, docnames: set[str], other: Any) -> None:
    _holders(env).update(_holders(other) & set(docnames))


def setup(app: Any) -> dict[str, Any]:
    """
    Register the directive, and re-read its documents when pages are added
    or removed.
    """
    app.add_directive("pagetree", PageTree)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

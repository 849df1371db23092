"""
Tests for the documentation: the epytext conversion and page list of the
Sphinx extensions (C{docs/_ext/}), the plugin example that C{docs/plugins.rst}
shows (C{docs/_examples/}), and the agreement of C{docs/configuration.rst}
with L{clustron.config}.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from types import ModuleType
from typing import Any

import attrs
import yaml
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron import config as config_module
from clustron import plugins
from clustron.config import NodeConfig
from clustron.interfaces import (
    IDiscovery,
    IDiscoveryPlugin,
    IElectionPlugin,
    IElectionStrategy,
)
from clustron.membership.view import Member

_DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def _load(name: str) -> ModuleType:
    """
    Import one of the documentation's Sphinx extensions (which import each
    other by their plain names, as Sphinx loads them from C{docs/_ext}).
    """
    ext = os.path.join(_DOCS, "_ext")
    path = os.path.join(ext, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ext)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(ext)
    return module


epytext = _load("epytext")


def convert(text: str) -> str:
    return "\n".join(epytext.convert(text.split("\n")))


class FieldTests(SynchronousTestCase):
    """
    Epytext fields become reStructuredText fields.
    """

    def test_known_fields(self) -> None:
        """
        param, type, return, rtype, raise and ivar map to Sphinx's names;
        continuation lines are kept.
        """
        self.assertEqual(
            convert(
                "Do it.\n\n"
                "@param x: the x.\n"
                "    More about x.\n"
                "@type x: int\n"
                "@return: the result.\n"
                "@rtype: str\n"
                "@raise ValueError: when bad.\n"
                "@ivar y: why."
            ),
            "Do it.\n\n"
            ":param x: the x.\n"
            "    More about x.\n"
            ":type x: int\n"
            ":returns: the result.\n"
            ":rtype: str\n"
            ":raises ValueError: when bad.\n"
            ":ivar y: why.",
        )

    def test_unknown_field_passes_through(self) -> None:
        """
        A tag without a mapping becomes a generic field of the same name.
        """
        self.assertEqual(convert("@since: 1.2\n@note: careful"), ":since: 1.2\n:note: careful")

    def test_blank_line_before_field_list(self) -> None:
        """
        A field right after a paragraph line is separated from it.
        """
        self.assertEqual(convert("Text.\n@return: x"), "Text.\n\n:returns: x")

    def test_blank_line_after_field_list(self) -> None:
        """
        Text at the field's indentation after a field ends the list with a
        blank line.
        """
        self.assertEqual(convert("@return: x\nAfter."), ":returns: x\n\nAfter.")

    def test_markup_in_field_argument_is_stripped(self) -> None:
        """
        Field names cannot hold markup, so markup in the argument is removed.
        """
        self.assertEqual(convert("@raise L{errors.Bad}: no"), ":raises errors.Bad: no")

    def test_decorator_in_literal_block_untouched(self) -> None:
        """
        Lines of a literal block are never converted, even ones that look
        like fields or markup.
        """
        text = "Example::\n\n    @implementer(I):\n    x = C{1}\n\nC{done}"
        self.assertEqual(
            convert(text), "Example::\n\n    @implementer(I):\n    x = C{1}\n\n``done``"
        )

    def test_doctest_untouched(self) -> None:
        """
        Doctest blocks are left alone.
        """
        self.assertEqual(convert(">>> C{1}\nC{1}\n\nC{2}"), ">>> C{1}\nC{1}\n\n``2``")


class InlineTests(SynchronousTestCase):
    """
    Inline markup becomes reStructuredText inline markup.
    """

    def test_code(self) -> None:
        """
        C{} becomes an inline literal.
        """
        self.assertEqual(epytext.convert_inline("use C{x = 1} here"), "use ``x = 1`` here")

    def test_nested_braces(self) -> None:
        """
        Braces inside C{} are matched, not mistaken for its end.
        """
        self.assertEqual(
            epytext.convert_inline('body C{{"a": {"b": 1}}}.'), 'body ``{"a": {"b": 1}}``.'
        )

    def test_link(self) -> None:
        """
        L{} becomes a py:obj cross-reference, with or without a title.
        """
        self.assertEqual(epytext.convert_inline("see L{a.B}"), "see :py:obj:`a.B`")
        self.assertEqual(
            epytext.convert_inline("see L{the B<a.B>}"), "see :py:obj:`the B <a.B>`"
        )

    def test_emphasis(self) -> None:
        """
        I{} and B{} become emphasis and strong emphasis.
        """
        self.assertEqual(epytext.convert_inline("I{who} B{does}"), "*who* **does**")

    def test_word_boundaries_escaped(self) -> None:
        """
        Markup glued to characters that cannot border inline markup is
        separated with escaped spaces, which reStructuredText does not render.
        """
        self.assertEqual(epytext.convert_inline("C{x}s"), "``x``\\ s")
        self.assertEqual(epytext.convert_inline("(C{x})"), "(``x``)")
        self.assertEqual(epytext.convert_inline("=I{b}"), "=\\ *b*")

    def test_capital_inside_word_is_not_markup(self) -> None:
        """
        A capital letter that ends a word is not a markup letter.
        """
        self.assertEqual(epytext.convert_inline("ABC{x}"), "ABC{x}")

    def test_unbalanced_left_alone(self) -> None:
        """
        Markup whose braces never close is not converted.
        """
        self.assertEqual(epytext.convert_inline("C{oops"), "C{oops")

    def test_markup_spanning_lines(self) -> None:
        """
        Markup may span lines of one paragraph; the line count is kept.
        """
        self.assertEqual(convert("a C{(x,\n    y)} b"), "a ``(x,\n    y)`` b")

    def test_escapes(self) -> None:
        """
        E{lb} and E{rb} are braces.
        """
        self.assertEqual(epytext.convert_inline("E{lb}x E{rb}"), "{x }")

    def test_rest_passes_through(self) -> None:
        """
        A docstring already in reStructuredText is unchanged.
        """
        text = "Use ``x`` and :class:`Y`.\n\n:param z: a z."
        self.assertEqual(convert(text), text)


class TitleTests(SynchronousTestCase):
    """
    Section titles, which autodoc output cannot hold, become rubrics.
    """

    def test_title_becomes_rubric(self) -> None:
        """
        An underlined title becomes a rubric closed by an empty comment, so
        an indented block after it stays a block quote.
        """
        self.assertEqual(
            convert("Intro.\n\nThe model\n=========\n\n  - item"),
            "Intro.\n\n.. rubric:: The model\n\n..\n\n\n  - item",
        )

    def test_table_border_is_not_a_title(self) -> None:
        """
        A simple table's border lines are not underlines.
        """
        text = "=====  =====\na      b\n=====  ====="
        self.assertEqual(convert(text), text)


class PageTreeTests(SynchronousTestCase):
    """
    The page list adds every unlisted top-level page and folder index.
    """

    def test_extra_pages(self) -> None:
        """
        Listed pages, the current page and sub-folder pages other than
        indexes are left out; the rest is sorted.
        """
        try:
            pagetree = _load("pagetree")
        except ImportError as e:
            raise self.skipTest(f"Sphinx is not installed (pip install .[docs]): {e}") from None
        found = {"index", "api", "zeta", "alpha", "api/core", "guide/index", "guide/step"}
        self.assertEqual(
            pagetree.extra_pages(found, "index", ["api"]), ["alpha", "guide/index", "zeta"]
        )


class PublicNamesTests(SynchronousTestCase):
    """
    The table of a package's public names links each to its definition.
    """

    def test_rows(self) -> None:
        """
        Classes and exceptions link to their defining module; values show
        their value.
        """
        try:
            publicapi = _load("publicapi")
        except ImportError as e:
            raise self.skipTest(f"Sphinx is not installed (pip install .[docs]): {e}") from None
        import clustron

        rows = {name: rest for name, *rest in publicapi.public_rows(clustron)}
        self.assertEqual(
            rows["ClusterNode"],
            [":py:obj:`clustron.node.ClusterNode`", "A member of a Clustron cluster."],
        )
        self.assertEqual(rows["NoQuorum"][0], ":py:exc:`clustron.errors.NoQuorum`")
        self.assertEqual(rows["__version__"], [f"``__version__ = {clustron.__version__!r}``", ""])


class PluginExampleTests(SynchronousTestCase):
    """
    The third-party plugin package of C{docs/_examples/}, shown in
    C{docs/plugins.rst}, works as the page says once it is on the path.
    """

    def setUp(self) -> None:
        root = self.mktemp()
        shutil.copytree(os.path.join(_DOCS, "_examples"), root)
        import twisted.plugins

        sys.path.insert(0, root)
        plugin_dir = os.path.join(root, "twisted", "plugins")
        twisted.plugins.__path__.insert(0, plugin_dir)

        def restore() -> None:
            sys.path.remove(root)
            twisted.plugins.__path__.remove(plugin_dir)
            for name in list(sys.modules):
                if name == "acme_clustron" or name.startswith("acme_clustron."):
                    del sys.modules[name]
            sys.modules.pop("twisted.plugins.acme_clustron_plugins", None)

        self.addCleanup(restore)
        self.root = root

    def test_plugin_module_imports(self) -> None:
        """
        The plugin module imports on its own (an import failure would make
        Twisted skip it silently).
        """
        module = importlib.import_module("twisted.plugins.acme_clustron_plugins")
        self.assertEqual(module.file_discovery.name, "file")
        self.assertEqual(module.ordinal_election.name, "ordinal")

    def test_discoverable(self) -> None:
        """
        Clustron finds both plugins by name, next to the built-in ones.
        """
        discovery = plugins.find("discovery", "file")
        election = plugins.find("election", "ordinal")
        self.assertTrue(verifyObject(IDiscoveryPlugin, discovery))
        self.assertTrue(verifyObject(IElectionPlugin, election))
        self.assertIn("static", plugins.installed("discovery"))

    def test_configuration_selects_them(self) -> None:
        """
        A configuration naming the plugins validates, and the plugin's own
        option problems are reported under its key.
        """
        config = NodeConfig.from_dict(
            {
                "cluster_id": "demo",
                "node_id": "n1",
                "discovery": {"file": {"path": "peers.txt"}},
                "election": {"plugin": "ordinal"},
            }
        )
        self.assertEqual(config.election.plugin, "ordinal")
        self.assertEqual(
            plugins.find("discovery", "file").validate({"interval": 0}),
            [
                ("path", "is required"),
                ("interval", "must be a number greater than 0, got int 0"),
            ],
        )

    def test_file_discovery(self) -> None:
        """
        The file source reads its file at start and again every interval,
        calls C{on_change} when the set changes, and keeps what it knew when
        the file cannot be read.
        """
        peers = os.path.join(self.root, "peers.txt")
        with open(peers, "w") as f:
            f.write("# seeds\n10.0.0.1:7101\n[fd00::2]:7101  # second\n")
        config = NodeConfig(
            cluster_id="demo", node_id="n1", source_path=os.path.join(self.root, "n.yaml")
        )
        clock = Clock()
        changes: list[int] = []
        source = plugins.find("discovery", "file").create(
            clock, config, {"path": "peers.txt", "interval": 2}, lambda: changes.append(1)
        )
        self.assertTrue(verifyObject(IDiscovery, source))
        source.start()
        self.assertEqual(source.addresses(), {("10.0.0.1", 7101), ("fd00::2", 7101)})
        self.assertEqual(len(changes), 1)
        with open(peers, "w") as f:
            f.write("10.0.0.3:7101\n")
        clock.advance(2)
        self.assertEqual(source.addresses(), {("10.0.0.3", 7101)})
        self.assertEqual(len(changes), 2)
        os.remove(peers)
        clock.advance(2)
        self.assertEqual(source.addresses(), {("10.0.0.3", 7101)})
        self.assertEqual(len(changes), 2)
        source.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ordinal_strategy(self) -> None:
        """
        Priority first, then the number ending the node id.
        """
        strategy = plugins.find("election", "ordinal").create(None)
        self.assertTrue(verifyObject(IElectionStrategy, strategy))
        members = [Member(node_id, f"h:{i + 1}", 1) for i, node_id in enumerate(["n9", "n10", "a"])]
        self.assertEqual(strategy.choose(members), "n10")
        members.append(Member("n2", "h:9", 1, priority=1))
        self.assertEqual(strategy.choose(members), "n2")
        self.assertIsNone(strategy.choose([]))


def _table_rows(text: str) -> list[list[str]]:
    """
    The rows of every C{list-table} in a reStructuredText text, each a list
    of cells with their continuation lines joined.
    """
    rows: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("* - "):
            current = [stripped[4:]]
            rows.append(current)
        elif current is not None and stripped.startswith("- "):
            current.append(stripped[2:])
        elif current is not None and stripped and line[:1] != " ":
            current = None
        elif current is not None and stripped:
            current[-1] += " " + stripped
    return rows


def _literal(cell: str) -> str | None:
    """
    The text of a cell that is exactly one inline literal (optionally
    C{profile (``x``)}), else None.
    """
    if cell.startswith("profile (") and cell.endswith(")"):
        cell = cell[len("profile (") : -1]
    if cell.startswith("``") and cell.endswith("``") and cell.count("``") == 2:
        return cell[2:-2]
    return None


def _documented_keys() -> dict[str, tuple[Any, bool]]:
    """
    Every configuration key a user writes, with its default and whether it
    is reloadable, from the attrs classes of L{clustron.config}.
    """
    keys: dict[str, tuple[Any, bool]] = {}
    special = {
        "tokens": ("admin.tokens[]", ("name", "role", "token", "token_file", "token_env")),
        "keys": ("security.keys[]", ("file", "env")),
    }
    internal = {"source_path", "secret", "key_sources"}
    nested = {
        "wire": config_module.WireConfig,
        "membership": config_module.MembershipConfig,
        "failure_detector": config_module.FailureDetectorConfig,
        "election": config_module.ElectionConfig,
        "messaging": config_module.MessagingConfig,
        "admin": config_module.AdminConfig,
        "logging": config_module.LoggingConfig,
        "security": config_module.SecurityConfig,
        "tls": config_module.TlsConfig,
        "tracing": config_module.TracingConfig,
    }

    def walk(cls: type, prefix: str, live: bool) -> None:
        for field in attrs.fields(cls):
            if field.name in internal:
                continue
            path = f"{prefix}{field.name}"
            reloadable = live or bool(field.metadata.get("reloadable"))
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = None
            if prefix or field.name not in nested or field.name == "tls":
                # Sections are headings, not keys; the optional tls
                # mappings are keys too.
                keys[path] = (default, reloadable)
            if field.name in special and prefix in ("admin.", "security."):
                base, names = special[field.name]
                for name in names:
                    keys[f"{base}.{name}"] = (None, reloadable)
            if not prefix and field.name in nested:
                walk(nested[field.name], f"{path}.", reloadable)
            if prefix == "admin." and field.name == "tls":
                walk(config_module.AdminTlsConfig, "admin.tls.", reloadable)

    walk(NodeConfig, "", False)
    return keys


class ConfigurationPageTests(SynchronousTestCase):
    """
    C{docs/configuration.rst} documents every key of L{clustron.config}
    with its real default and reloadability.
    """

    def setUp(self) -> None:
        with open(os.path.join(_DOCS, "configuration.rst"), encoding="utf-8") as f:
            self.text = f.read()
        self.rows = {
            row[0][2:-2]: row for row in _table_rows(self.text) if _literal(row[0]) is not None
        }

    def test_every_key_documented(self) -> None:
        """
        Each key has a row in a key table.
        """
        missing = sorted(set(_documented_keys()) - set(self.rows) - {"discovery"})
        self.assertEqual(missing, [])

    def test_defaults(self) -> None:
        """
        A default written as one literal equals the code's default.
        """
        wrong = []
        for key, (default, _) in _documented_keys().items():
            row = self.rows.get(key)
            if row is None or len(row) < 3 or _literal(row[2]) is None:
                continue
            written = yaml.safe_load(_literal(row[2]) or "")
            actual = list(default) if isinstance(default, tuple) else default
            if written != actual:
                wrong.append((key, written, actual))
        self.assertEqual(wrong, [])

    def test_reloadable_marks(self) -> None:
        """
        Rows of reloadable keys say so, other rows do not, and the reload
        section lists the reloadable keys.
        """
        wrong = []
        for key, (_, reloadable) in _documented_keys().items():
            row = self.rows.get(key)
            if row is None or key.startswith("admin.tokens[]"):
                continue
            marked = "Reloadable" in " ".join(row)
            if marked != reloadable:
                wrong.append((key, reloadable))
        self.assertEqual(wrong, [])
        reload_section = self.text.split("Reloading\n---------", 1)[1].split("\n\n\n", 1)[0]
        for key in ("discovery", "failure_detector", "admin.tokens", "logging.level"):
            self.assertIn(f"``{key}``", reload_section)

    def test_profiles(self) -> None:
        """
        The profile table holds the values of L{clustron.config.PROFILES}.
        """
        table = self.text.split(":name: profile-defaults", 1)[1]
        rows = {row[0][2:-2]: row[1:] for row in _table_rows(table)[1:7]}
        for profile_index, profile in enumerate(("local", "lan", "wan")):
            for section, values in config_module.PROFILES[profile].items():
                for key, value in values.items():
                    self.assertEqual(float(rows[f"{section}.{key}"][profile_index]), value)


def _modules_with_code() -> set[str]:
    """
    The dotted names of every public module of the C{clustron} package,
    leaving out private modules (C{_version}) and package C{__init__} modules
    that hold nothing but a docstring.
    """
    import ast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = set()
    for directory, _, files in os.walk(os.path.join(root, "clustron")):
        for file_name in files:
            if not file_name.endswith(".py") or file_name.startswith("_") and (
                file_name != "__init__.py"
            ):
                continue
            path = os.path.join(directory, file_name)
            relative = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
            if file_name == "__init__.py":
                with open(path, encoding="utf-8") as f:
                    body = ast.parse(f.read()).body
                if all(isinstance(node, ast.Expr) for node in body):
                    continue
                relative = relative[: -len(".__init__")]
            names.add(relative)
    return names


class ApiPagesTests(SynchronousTestCase):
    """
    The API reference (C{docs/api/*.rst}) documents every module, and only
    modules that exist.
    """

    def test_every_module_documented(self) -> None:
        """
        Each module appears in exactly one C{automodule} directive, and each
        directive names an existing module.
        """
        documented: list[str] = []
        api = os.path.join(_DOCS, "api")
        for file_name in sorted(os.listdir(api)):
            if file_name.endswith(".rst"):
                with open(os.path.join(api, file_name), encoding="utf-8") as f:
                    for line in f:
                        if line.startswith(".. automodule:: "):
                            documented.append(line.split("::", 1)[1].strip())
        modules = _modules_with_code()
        self.assertEqual(
            {
                "missing from docs/api": sorted(modules - set(documented)),
                "not a module": sorted(set(documented) - modules),
                "twice": sorted({name for name in documented if documented.count(name) > 1}),
            },
            {"missing from docs/api": [], "not a module": [], "twice": []},
        )

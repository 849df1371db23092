"""
A Sphinx extension that turns Clustron's epytext-style docstrings into
reStructuredText while autodoc reads them.

Clustron's docstrings follow Twisted's conventions: fields such as
C{@param name:}, C{@return:}, C{@raise Error:} and C{@ivar name:}, and inline
markup such as C{L{target}}, C{C{code}}, C{I{italic}} and C{B{bold}}. Sphinx
reads reStructuredText, where the same docstrings render as a run-on
paragraph. On every C{autodoc-process-docstring} event this extension rewrites
the lines:

  - C{@param x:} becomes C{:param x:}, C{@return:} C{:returns:},
    C{@raise E:} C{:raises E:}, C{@ivar x:} C{:ivar x:}, C{@type x:}
    C{:type x:}, C{@rtype:} C{:rtype:}, C{@keyword x:} C{:keyword x:}; any
    other C{@tag arg:} becomes the generic field C{:tag arg:}, so unknown
    fields are passed through rather than lost;
  - C{L{name}} and C{L{text <name>}} become C{:py:obj:} cross-references
    (an unresolved one renders as code; without nitpicky mode it is not a
    warning), C{C{x}} an inline literal, C{I{x}} emphasis, C{B{x}} strong
    emphasis, C{U{url}} a link, C{M{x}} a literal, C{E{lb}} and C{E{rb}}
    braces;
  - a section title inside a docstring (a line underlined with C{===} or
    C{---}), which docutils refuses inside autodoc's output, becomes a
    rubric.

Literal blocks (after a line ending in C{::}) and doctest blocks are left
alone. Docstrings already written in reStructuredText pass through unchanged.

The conversion (L{convert}) is plain Python with no Sphinx import, so it is
unit-tested on its own; L{setup} registers it with Sphinx.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: Epytext field tags and the reStructuredText field names they become.
FIELD_NAMES = {
    "param": "param",
    "parameter": "param",
    "arg": "param",
    "argument": "param",
    "type": "type",
    "return": "returns",
    "returns": "returns",
    "rtype": "rtype",
    "returntype": "rtype",
    "raise": "raises",
    "raises": "raises",
    "except": "raises",
    "exception": "raises",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
    "keyword": "keyword",
    "kwarg": "keyword",
    "kwparam": "keyword",
    "see": "see also",
    "seealso": "see also",
}

_FIELD = re.compile(
    r"^(?P<indent>[ \t]*)@(?P<tag>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:[ \t]+(?P<arg>[^:\n]*?))?[ \t]*:(?P<rest>(?:[ \t].*)?)$"
)
_UNDERLINE = re.compile(r"^[ \t]*([=\-~^\"'#*+`])\1{2,}[ \t]*$")
_LITERAL_DIRECTIVE = re.compile(r"^\s*\.\.\s+(code-block|code|sourcecode|doctest)::")
_MARKUP_LETTERS = "LCIBUMES"

# docutils: inline markup must start after whitespace or one of these, and
# end before whitespace or one of these.
_BEFORE_START = set(" \t\n'\"<([{-/:\u2018\u201c")
_AFTER_END = set(" \t\n'\")]}>-/:.,;!?\\\u2019\u201d")


def convert(lines: Iterable[str]) -> list[str]:
    """
    Rewrite the lines of one epytext docstring as reStructuredText.

    @param lines: the docstring's lines, already dedented (as autodoc gives
        them).
    @return: the new lines; their number may differ (blank lines are added
        around field lists where reStructuredText needs them).
    """
    lines = list(lines)
    literal = _literal_lines(lines)
    converted: list[str] = []
    flags: list[bool] = []
    field_indent: int | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if literal[index]:
            converted.append(line)
            flags.append(True)
            index += 1
            continue
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if (
            index + 1 < len(lines)
            and stripped
            and not literal[index + 1]
            and _is_title(lines, index)
        ):
            if converted and converted[-1].strip():
                converted.append("")
                flags.append(False)
            # The empty comment ends the rubric, so that an indented block
            # after the title stays a block quote instead of becoming the
            # rubric's (forbidden) content.
            converted.append(" " * indent + ".. rubric:: " + strip_markup(stripped))
            converted += ["", " " * indent + "..", ""]
            flags.extend([False, False, False, False])
            field_indent = None
            index += 2
            continue
        match = _FIELD.match(line)
        if match:
            if converted and converted[-1].strip() and field_indent is None:
                converted.append("")
                flags.append(False)
            converted.append(_field(match))
            flags.append(False)
            field_indent = len(match.group("indent"))
            index += 1
            continue
        if field_indent is not None and stripped:
            if indent <= field_indent:
                # The field list ended without a blank line.
                converted.append("")
                flags.append(False)
                field_indent = None
        elif not stripped:
            field_indent = None
        converted.append(line)
        flags.append(False)
        index += 1
    return _convert_inline_runs(converted, flags)


def _is_title(lines: list[str], index: int) -> bool:
    """
    Whether C{lines[index]} is a section title underlined by the next line.
    """
    text = lines[index].rstrip()
    underline = lines[index + 1].rstrip()
    if not _UNDERLINE.match(underline):
        return False
    indent = len(text) - len(text.lstrip())
    if len(underline) - len(underline.lstrip()) != indent:
        return False
    if len(underline.strip()) < len(text.strip()):
        return False
    if _FIELD.match(text) or text.lstrip().startswith(("..", "- ", "* ", ">>>")):
        return False
    return index == 0 or not lines[index - 1].strip()


def _literal_lines(lines: list[str]) -> list[bool]:
    """
    @return: for each line, whether it belongs to a literal or doctest block.
    """
    flags = [False] * len(lines)
    literal_indent: int | None = None
    in_doctest = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                flags[index] = True
                continue
            literal_indent = None
        if in_doctest:
            if stripped:
                flags[index] = True
                continue
            in_doctest = False
        if stripped.startswith(">>>"):
            flags[index] = True
            in_doctest = True
            continue
        if stripped.endswith("::") and (
            not stripped.startswith("..") or _LITERAL_DIRECTIVE.match(line)
        ):
            literal_indent = indent
    return flags


def _field(match: re.Match[str]) -> str:
    tag = match.group("tag")
    name = FIELD_NAMES.get(tag.lower(), tag)
    arg = match.group("arg")
    head = f"{match.group('indent')}:{name}"
    if arg:
        head += " " + strip_markup(arg).replace(":", r"\:")
    return f"{head}:{match.group('rest')}"


def _convert_inline_runs(lines: list[str], literal: list[bool]) -> list[str]:
    """
    Convert inline markup in each run of non-literal lines (markup may span
    lines within a run).
    """
    out: list[str] = []
    run: list[str] = []
    for line, is_literal in zip(lines, literal, strict=True):
        if is_literal:
            if run:
                out.extend(convert_inline("\n".join(run)).split("\n"))
                run = []
            out.append(line)
        else:
            run.append(line)
    if run:
        out.extend(convert_inline("\n".join(run)).split("\n"))
    return out


def _closing_brace(text: str, start: int) -> int:
    """
    @param start: the index just after an opening brace.
    @return: the index of the matching closing brace, or -1.
    """
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _markup_at(text: str, index: int) -> bool:
    return (
        text[index] in _MARKUP_LETTERS
        and index + 1 < len(text)
        and text[index + 1] == "{"
        and (index == 0 or not (text[index - 1].isalnum() or text[index - 1] == "_"))
    )


def convert_inline(text: str) -> str:
    """
    Replace epytext inline markup in C{text} with reStructuredText.

    Markup whose braces do not balance is left as it is.

    @param text: a run of docstring text with no literal blocks in it.
    @return: the converted text (the same number of lines).
    """
    out: list[str] = []
    index = 0
    while index < len(text):
        if not _markup_at(text, index):
            out.append(text[index])
            index += 1
            continue
        end = _closing_brace(text, index + 2)
        if end == -1:
            out.append(text[index])
            index += 1
            continue
        letter = text[index]
        body = text[index + 2 : end]
        rendered, inline = _render(letter, body)
        if inline and rendered:
            before = out[-1][-1:] if out and out[-1] else ""
            if before and before not in _BEFORE_START:
                rendered = "\\ " + rendered
            after = text[end + 1 : end + 2]
            if after and after not in _AFTER_END:
                rendered += "\\ "
        out.append(rendered)
        index = end + 1
    return "".join(out)


def strip_markup(text: str) -> str:
    """
    @return: C{text} with epytext inline markup replaced by its plain text
        (for places where reStructuredText allows no markup, such as field
        names and rubrics).
    """
    out: list[str] = []
    index = 0
    while index < len(text):
        if _markup_at(text, index):
            end = _closing_brace(text, index + 2)
            if end != -1:
                body = text[index + 2 : end]
                letter = text[index]
                if letter == "L":
                    body = _split_link(body)[0]
                elif letter == "E":
                    body = _escape(body)
                out.append(strip_markup(body) if letter != "C" else body)
                index = end + 1
                continue
        out.append(text[index])
        index += 1
    return "".join(out)


def _escape(body: str) -> str:
    return {"lb": "{", "rb": "}"}.get(body.strip(), body)


def _split_link(body: str) -> tuple[str, str | None]:
    """
    Split C{"text <target>"} (or C{"text<target>"}) into its text and
    target; a bare target gives C{(target, None)}.
    """
    match = re.match(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>\s*$", body, re.S)
    if match and match.group("text").strip():
        return match.group("text").strip(), match.group("target").strip()
    return body.strip(), None


def _literal(body: str) -> str:
    body = body.strip()
    if not body:
        return ""
    if "``" in body or "`" in body[:1] or "`" in body[-1:]:
        return body
    return f"``{body}``"


def _render(letter: str, body: str) -> tuple[str, bool]:
    """
    @return: the reStructuredText for one piece of markup, and whether it is
        inline markup that needs separating from adjacent word characters.
    """
    if letter == "C" or letter == "M":
        return _literal(body), True
    if letter == "E":
        return _escape(body), False
    if letter == "S":
        return body, False
    if letter == "L":
        text, target = _split_link(body)
        if target is None:
            target = text
            title = None
        else:
            title = " ".join(convert_inline(text).split())
        target = re.sub(r"\(\)$", "", "".join(target.split()))
        if not target or "`" in target or (title is not None and "`" in title):
            return _literal(strip_markup(body)), True
        if title is None:
            return f":py:obj:`{target}`", True
        return f":py:obj:`{title} <{target}>`", True
    if letter == "U":
        text, target = _split_link(body)
        if target is None:
            return f"`{text} <{text}>`__", True
        return f"`{strip_markup(text)} <{target}>`__", True
    inner = convert_inline(body).strip()
    if not inner:
        return "", False
    if any(char in inner for char in "*`"):
        # reStructuredText cannot nest inline markup: keep the inner markup.
        return inner, False
    mark = "**" if letter == "B" else "*"
    return f"{mark}{inner}{mark}", True


def process_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """
    The C{autodoc-process-docstring} handler: convert C{lines} in place.
    """
    lines[:] = convert(lines)


def setup(app: Any) -> dict[str, Any]:
    """
    Register the docstring conversion with Sphinx.
    """
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

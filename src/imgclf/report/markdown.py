"""Markdown for the PR comments, with every string from outside the code made inert.

Class names are folder names, file names come from the dataset, params and revision
names come from whoever opened the PR: all of them end up in a comment that GitHub
renders. A ``|`` or a newline in a class folder's name would split a table row, a
leading ``#`` would start a heading, ``<img src=…>`` or ``[x](https://…)`` would
inject HTML or links, ``@someone`` would ping a person. So:

* :func:`code` is **the** escaping function: any untrusted string becomes one inline
  code span that shows exactly that text. Inside a code span markdown, HTML, links,
  mentions and issue references are not interpreted; what is left to handle is what
  can break out of the span — backticks (a longer fence), line breaks and other
  control or invisible characters (shown as ``\\n``, ``\\u202e`` …), and length.
* :func:`inline` returns a string unchanged when it is made only of characters that
  mean nothing in markdown (``lr=0.05``, ``origin/main``) and holds nothing GitHub would
  link or emphasise (``https://…``, ``www.…``, ``GH-1``, ``__x__``), else ``code(text)``: the
  report keeps its plain look for ordinary values and escapes everything else.
* :func:`table` applies GitHub's own table rule to every cell: a ``|`` inside a cell
  (code spans included) must be written ``\\|``. That is structure, not content, so it
  lives with the table and holds for trusted cells too.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any

# Longer names are cut: a comment has a size limit and a reviewer a screen width.
MAX_CHARS = 200
_VISIBLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control, format (bidi overrides, zero-width), line and paragraph separators.
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp"}
_PLAIN = re.compile(r"[A-Za-z0-9_.,:=+/-]+(?: [A-Za-z0-9_.,:=+/-]+)*")
# Plain characters that GitHub still turns into something: URLs (``https://…``), its
# extended autolinks (``www.…``), issue references (``GH-1``), and ``_`` that opens or
# closes emphasis (``__x__``, ``_x_``; an ``_`` inside a word, as in ``batch_size``, does not).
_ACTIVE = re.compile(
    r"://|(?<![A-Za-z0-9])www\.|(?<![A-Za-z0-9])GH-[0-9]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_PIPE = re.compile(r"(\\*)\|")


def _visible(text: str) -> str:
    """Line breaks and invisible characters as escapes a reviewer can read."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch) in _INVISIBLE:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def code(text: object) -> str:
    """Any untrusted string as one inline code span that renders exactly that text.

    The fence is one backtick longer than the longest backtick run inside, so backticks
    in the text cannot close it; a space pads text that starts or ends with a backtick
    or a space (CommonMark strips exactly one such space on each side).
    """
    s = _visible(str(text))
    if len(s) > MAX_CHARS:
        s = s[: MAX_CHARS - 1] + "…"
    if not s:
        return "(empty)"
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.strip(" ") and (s[0] in "` " or s[-1] in "` ") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def inline(text: object) -> str:
    """Plain when harmless (letters, digits, ``_.,:=+/-``, single spaces, and nothing GitHub
    links or emphasises: see ``_ACTIVE``), else :func:`code`."""
    s = str(text)
    plain = _PLAIN.fullmatch(s) and not _ACTIVE.search(s) and len(s) <= MAX_CHARS
    return s if plain else code(s)


def _cell(text: str) -> str:
    """Escape every ``|`` so that it cannot end the cell (GFM: ``\\|``, also inside code).

    A pipe after backslashes is escaped only if an odd number of backslashes precede
    it, so the run is doubled first: the cell keeps its boundaries whatever the text.
    """
    return _PIPE.sub(lambda m: m[1] * 2 + "\\|", text)


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A GitHub markdown table; every cell's pipes escaped (see :func:`_cell`)."""
    head = [_cell(h) for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def fmt(value: Any) -> str:
    """Numbers as a reviewer wants them: 4 decimals for fractions, integers as is.

    Anything that is not a number (a string metric, say) goes through :func:`inline`.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.6g}"
    return inline(value)


def fmt_change(old: Any, new: Any) -> str:
    """Signed difference, or a plain word when there is nothing to subtract."""
    if old is None and new is None:
        return "—"
    if old is None:
        return "new"
    if new is None:
        return "removed"
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        diff = new - old
        if diff == 0:
            return "0"
        if isinstance(old, int) and isinstance(new, int):
            return f"{diff:+d}"
        return f"{diff:+.4f}"
    return "changed" if old != new else "0"


def param_value(value: Any) -> str:
    """A param as one would type it after ``-S key=`` (raw text: escape before use)."""
    if value is None:
        return "(unset)"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value).lower() if isinstance(value, bool) else str(value)


def param_cell(value: Any) -> str:
    """A param value for the markdown: numbers as typed, anything else escaped."""
    return "(unset)" if value is None else inline(param_value(value))


# --------------------------------------------------------------------------- images and size

_ALT = re.compile(r"[A-Za-z0-9 ,.'-]+")
_FILE = re.compile(r"[a-z0-9][a-z0-9-]*\.png")


def image_line(alt: str, folder: str, name: str) -> str:
    """``![alt](folder/name)`` on a line of its own: the form the workflow rewrites.

    Only the report's own words and file names go in (checked), and the folder is
    percent-encoded, so the link cannot be bent into anything else.
    """
    from urllib.parse import quote

    if not _ALT.fullmatch(alt) or not _FILE.fullmatch(name):
        raise ValueError(f"not an image line the report makes: {alt!r}, {name!r}")
    folder = quote(folder.strip("/") or ".", safe="/._-~")
    return f"![{alt}]({folder}/{name})"


# GitHub refuses a comment body over 65,536 characters. The workflow adds a lock-check
# note (≤ 30 quoted lines) and replaces relative image links by longer ones: keep room.
COMMENT_LIMIT = 65_536
COMMENT_RESERVE = 8_000


def fit_comment(text: str, limit: int = COMMENT_LIMIT - COMMENT_RESERVE) -> str:
    """The report, cut at a line boundary with a note if it would not fit in a comment."""
    if len(text) <= limit:
        return text
    note = (
        "\n\n> **Report truncated** to fit a GitHub comment: run `imgclf report` locally, "
        "or read the full file in the run's artifact.\n"
    )
    cut = text.rfind("\n", 0, limit - len(note) - 20)
    head = text[: max(cut, 0)]
    if head.count("<details>") > head.count("</details>"):
        head += "\n\n</details>"
    return head + note


def quote(text: str, max_lines: int) -> str:
    """Tool output (``imgclf check-lock``'s verdict) as a markdown quote, each line one
    code span: the workflow pastes it into the PR comment, so it goes through
    :func:`code` like every other outside string (a ``sed 's/^/> /'`` escaped nothing)."""
    lines = text.splitlines()[:max_lines]
    return "\n".join(f"> {code(line)}" if line.strip() else ">" for line in lines)


if __name__ == "__main__":  # python -m imgclf.report.markdown quote FILE MAX_LINES (cml.yaml)
    if len(sys.argv) != 4 or sys.argv[1] != "quote":
        sys.exit("usage: python -m imgclf.report.markdown quote FILE MAX_LINES")
    from pathlib import Path

    print(quote(Path(sys.argv[2]).read_text(encoding="utf-8", errors="replace"), int(sys.argv[3])))

"""Names from outside the code cannot change the comment's markdown (injection tests).

Class folders, file names, params and revision names end up in a PR comment that GitHub
renders. These tests feed hostile names — a ``|`` and a newline that would split a table
row, a leading ``#`` heading, ``<img>`` HTML, link syntax, backticks, a mention, a bidi
override — through the real report on a real git + DVC repo and parse the result with a
CommonMark parser with GFM tables (markdown-it-py): every table keeps its column count,
and the rendered HTML has no tag, link or heading the report did not write itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from imgclf.report.markdown import code, inline, table
from tests.support import git, imgclf, init_dvc_repo

HOSTILE = [
    "a|b\n# hi <img src=x>",
    "back`tick``s",
    "[click](https://evil.example) @someone #1",
    "x\\|y",
    "<script>alert(1)</script>",
    "\u202edlrow",
    "  spaced  ",
    "line\r\nbreak\u2028sep",
    "*bold* _it_ ~~s~~",
]
PLAIN = "b"
CLASSES = [*HOSTILE, PLAIN]
PARSER = MarkdownIt("commonmark").enable("table")


def tables(markdown: str) -> list[list[int]]:
    """Cells per row for every table markdown-it finds."""
    found: list[list[int]] = []
    cells = 0
    for token in PARSER.parse(markdown):
        if token.type == "table_open":
            found.append([])
        elif token.type == "tr_open":
            cells = 0
        elif token.type in ("th_open", "td_open"):
            cells += 1
        elif token.type == "tr_close":
            found[-1].append(cells)
    return found


def html_tags(markdown: str) -> set[str]:
    """The names of the HTML elements the markdown renders to."""
    return set(re.findall(r"<([a-z][a-z0-9]*)\b", PARSER.render(markdown)))


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_code_is_one_inert_code_span(name: str) -> None:
    rendered = PARSER.render(code(name)).strip()
    assert rendered.startswith("<p><code>") and rendered.endswith("</code></p>"), rendered
    assert rendered.count("<code>") == 1 and "\n" not in rendered
    assert html_tags(code(name)) == {"p", "code"}


def test_code_shows_the_text_exactly() -> None:
    assert code("ok") == "`ok`"
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    body = PARSER.render(code("a`b``c")).strip()
    assert body == "<p><code>a`b``c</code></p>"
    assert "\\n" in code("two\nlines") and "\n" not in code("two\nlines")
    assert code("\u202e") == "`\\u202e`"
    assert len(code("x" * 5000)) < 300
    assert code("") == "(empty)"


def test_inline_keeps_ordinary_values_plain() -> None:
    assert inline("lr=0.05") == "lr=0.05"
    assert inline("origin/main") == "origin/main"
    assert inline("PR #7") == "`PR #7`"
    assert inline("a|b") == "`a|b`"


@pytest.mark.parametrize(
    "text", ["https://evil.example/x", "www.evil.example", "GH-1", "__bold__", "_em_", "a _b"]
)
def test_inline_escapes_what_github_links_or_emphasises(text: str) -> None:
    """Issue 20: these are made of "plain" characters, yet GitHub renders a link or
    emphasis from them in the PR comment; they must come out as one code span."""
    assert inline(text) == code(text)


def test_table_keeps_its_columns_with_hostile_cells() -> None:
    rows = [[code(n), inline(n), "1"] for n in HOSTILE]
    md = "\n".join(table(["name", "plain", "n"], rows))
    assert tables(md) == [[3] * (len(HOSTILE) + 1)]
    assert html_tags(md) <= {"table", "thead", "tbody", "tr", "th", "td", "code"}


# --------------------------------------------------------------------------- the real report

DVC_YAML = """\
stages:
  evaluate:
    cmd: python -c "print('metrics are written by the test')"
    params:
      - lr
      - name
    metrics:
      - metrics/evaluate.json:
          cache: false
      - metrics/prepare.json:
          cache: false
    outs:
      - metrics/predictions.csv:
          cache: false
"""


def write_metrics(repo: Path, flip: set[str]) -> None:
    """One test image per class; classes in ``flip`` are predicted as the plain class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["position", "path", "actual", "predicted", "confidence", "correct"])
    for i, cls in enumerate(CLASSES):
        predicted = PLAIN if cls in flip else cls
        writer.writerow([i, f"{cls}/img {i}|.png", cls, predicted, "0.9", int(predicted == cls)])
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/predictions.csv").write_text(buf.getvalue())
    acc = 1 - len(flip) / len(CLASSES)
    per_class = {
        c: {"precision": 0.5 if c in flip else 1.0, "recall": 0.0 if c in flip else 1.0,
            "f1": 0.0 if c in flip else 1.0, "support": 1}
        for c in CLASSES
    }  # fmt: skip
    evaluate = {"accuracy": acc, "macro_f1": acc, "n_test": len(CLASSES), "per_class": per_class,
                "model_name": "m|odel\n# x"}  # fmt: skip
    (repo / "metrics/evaluate.json").write_text(json.dumps(evaluate))
    prepare = {
        "dataset": "data/raw/<b>|x",
        "n_found": 12, "n_used": 10, "n_skipped": 2,
        "split": {"train": 6, "val": 2, "test": 2},
        "classes": {c: {"used": 1 + len(flip), "train": 1, "val": 0, "test": 0} for c in CLASSES},
        "image_size": {"min_width": 8, "max_width": 8},
        "skipped_by_reason": {"corrupt|x\n# y": len(flip) + 1},
        "skipped": [{"path": "a|b\n/<img src=x>.png", "reason": "corrupt: `x`|\n# y"}],
    }  # fmt: skip
    (repo / "metrics/prepare.json").write_text(json.dumps(prepare))


@pytest.fixture
def hostile_repo(tmp_path: Path) -> Path:
    """main: every class right; workspace: two hostile classes wrong and a hostile param."""
    repo = init_dvc_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text('lr: 0.1\nname: "plain"\n')
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_metrics(repo, set())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    write_metrics(repo, {HOSTILE[0], HOSTILE[2]})
    (repo / "params.yaml").write_text('lr: 0.2\nname: "x|y\\n# z <img src=x> `c`"\n')
    return repo


def assert_inert(markdown: str, expected_tags: set[str]) -> None:
    """Tables keep one column count; no heading, link, image or script came from data."""
    for rows in tables(markdown):
        assert len(set(rows)) == 1, f"a table row lost or gained cells: {rows}"
    tags = html_tags(markdown)
    assert tags <= expected_tags, tags - expected_tags
    assert not {"img", "script", "a", "h1"} & tags
    rendered = PARSER.render(markdown)
    assert "&lt;img src=x&gt;" in rendered, "the name is shown, as text"


def test_model_report_escapes_class_names_params_and_labels(hostile_repo: Path) -> None:
    out = imgclf(hostile_repo, "report", "--base", "main", "--label", "PR|#9 <b>").stdout
    assert_inert(out, {"h2", "h3", "p", "strong", "code", "table", "thead", "tbody", "tr",
                       "th", "td", "details", "summary", "sub", "blockquote", "br"})  # fmt: skip
    per_class = tables(out)[2]
    assert per_class[0] == 5 and len(per_class) == 1 + len(CLASSES)
    rendered = PARSER.render(out)
    assert "<td><code>a|b\\n# hi &lt;img src=x&gt;</code></td>" in rendered
    assert "<td><code>x|y\\n# z &lt;img src=x&gt; `c`</code></td>" in rendered
    assert "<th><code>PR|#9 &lt;b&gt;</code></th>" in rendered
    assert "lr=0.2" in out, "ordinary values keep their plain look"


def test_data_report_escapes_classes_paths_and_reasons(hostile_repo: Path) -> None:
    out = imgclf(hostile_repo, "data-report", "--base", "main", "--label", "PR #9").stdout
    tags = {"h2", "h3", "p", "code", "table", "thead", "tbody", "tr", "th", "td", "details",
            "summary", "sub", "ul", "li", "blockquote", "strong"}  # fmt: skip
    assert_inert(out, tags)
    rendered = PARSER.render(out)
    assert (
        "<li><code>a|b\\n/&lt;img src=x&gt;.png</code>: <code>corrupt: `x`|\\n# y</code></li>"
        in rendered
    )
    assert "<td><code>corrupt|x\\n# y</code></td>" in rendered

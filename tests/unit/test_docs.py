"""The docs say what the code does: generated tables current, names and commands real, examples run.

Docs go stale silently (the README once pointed at modules a reorganisation had
renamed), so each check here reads the pages and asks the code:

- the params and ``IMGCLF_*`` tables are what ``docs/gen_reference.py`` makes now;
- every ``imgclf <command>`` and ``make <target>`` a page shows exists;
- every repository path (``src/…``, ``tests/…``, ``bench/…``) and ``imgclf.x.y`` name in a
  code span exists;
- the blocks marked ``<!-- runs-in-tests -->`` run (bash, python), a YAML block marked
  ``<!-- runs-in-tests: params -->`` passes ``imgclf check-params``, and the table marked
  ``<!-- runs-in-tests: params-errors -->`` shows the messages validation really gives.

Links between pages are ``mkdocs build --strict``'s job (``make test`` runs it).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgclf.params import Params, ParamsError, validate_params
from tests.support import ROOT, tool_env

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("**/*.md"))
TEXTS = {p: p.read_text() for p in [*PAGES, ROOT / "README.md"]}
FENCE = re.compile(r"^```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
TAGGED = re.compile(
    r"<!-- runs-in-tests(?::\s*(?P<kind>[a-z-]+))? -->\n"
    r"(?:```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```|(?P<table>(?:\|[^\n]*\n)+))",
    re.DOTALL | re.MULTILINE,
)


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _code(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks: where names and commands are shown."""
    blocks = [m["body"] for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return re.findall(r"`([^`\n]+)`", prose) + [line for b in blocks for line in b.splitlines()]


def _tagged(kind: str | None) -> list[tuple[str, re.Match[str]]]:
    return [
        (p.relative_to(ROOT).as_posix(), m)
        for p, text in TEXTS.items()
        for m in TAGGED.finditer(text)
        if m["kind"] == kind
    ]


def test_reference_tables_are_current() -> None:
    """`make docs-reference` was run after the last change to the schema or the settings."""
    gen = _generator()
    pages = {p.name for p in gen.pages()}
    assert {"params.md", "serving.md"} <= pages
    stale = [p.relative_to(ROOT).as_posix() for p in gen.stale()]
    assert not stale, f"stale generated tables in {stale}: run `make docs-reference`"


def test_reference_tables_cover_the_code() -> None:
    """Every params key and every variable the server reads has a row."""
    gen = _generator()
    params_page = (DOCS / "params.md").read_text()
    for section, model in Params.model_fields.items():
        annotation = model.annotation
        fields = getattr(annotation, "model_fields", None)
        keys = [f"{section}.{k}" for k in fields] if fields else [section]
        for key in keys:
            assert f"| `{key}` |" in params_page, key
    settings = (ROOT / "src/imgclf/serving/settings.py").read_text()
    read = set(re.findall(r'"(IMGCLF_[A-Z_]+)"', settings))
    assert read == {v.name for v in gen.env_variables()}
    serving = (DOCS / "serving.md").read_text()
    assert not {name for name in read if f"| `{name}` |" not in serving}


def test_a_stale_table_is_caught(tmp_path: Path) -> None:
    gen = _generator()
    page = "<!-- BEGIN GENERATED: env IMGCLF_OOD -->\nold\n<!-- END GENERATED: env -->\n"
    rendered = gen.render(page)
    assert "old" not in rendered and "| `IMGCLF_OOD` | `flag` |" in rendered
    assert gen.render(rendered) == rendered


def test_documented_commands_exist() -> None:
    import typer.main

    from imgclf.cli import app

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    shown_commands, shown_targets = set(), set()
    for text in TEXTS.values():
        for code in _code(text):
            shown_commands |= set(re.findall(r"(?:^|[\s;&|(])imgclf ([a-z][a-z-]+)", code))
            shown_targets |= set(re.findall(r"(?:^|[\s;&|(])make ([a-z][a-z-]+)", code))
    assert {"predict", "serve", "check-params", "drift-report"} <= shown_commands
    assert not shown_commands - commands, "docs show commands imgclf does not have"
    assert {"repro", "test", "serve", "docs"} <= shown_targets
    assert not shown_targets - targets, "docs show make targets the Makefile does not have"


def _ignored(path: str) -> bool:
    """A git-ignored path (a cache such as ``bench/.work/``): documented, made at run time."""
    # As a folder too: `/bench/.work/` in .gitignore matches only a folder.
    return any(
        subprocess.run(["git", "check-ignore", "-q", p], cwd=ROOT, check=False).returncode == 0
        for p in (path, f"{path}/")
    )


def test_documented_paths_exist() -> None:
    missing = set()
    for page, text in TEXTS.items():
        for code in _code(text):
            for path in re.findall(
                r"(?<![\w/.])((?:src|stages|tests|bench|docs|dockerfiles|\.github)/[\w./-]*\w)",
                code,
            ):
                file = path.split("::")[0]
                if not (ROOT / file).exists() and not _ignored(file):
                    missing.add(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, sorted(missing)


def test_documented_python_names_exist() -> None:
    missing = set()
    for page, text in TEXTS.items():
        for code in _code(text):
            for dotted in re.findall(r"(?<![\w.])imgclf(?:\.[a-z_][A-Za-z_0-9]*)+", code):
                parts = dotted.split(".")
                for cut in range(len(parts), 0, -1):
                    try:
                        obj: Any = importlib.import_module(".".join(parts[:cut]))
                        break
                    except ImportError:
                        continue
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    missing.add(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, sorted(missing)


@pytest.mark.parametrize(("page", "block"), _tagged(None), ids=lambda v: getattr(v, "start", v))
def test_marked_examples_run(page: str, block: re.Match[str], tmp_path: Path) -> None:
    lang, body = block["lang"], block["body"]
    if lang == "bash":
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=ROOT,
            env=tool_env(ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{page}:\n{body}\n{proc.stdout}\n{proc.stderr}"
    elif lang == "python":
        script = tmp_path / "example.py"
        script.write_text(body)
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=tool_env(ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{page}:\n{body}\n{proc.stderr}"
    else:
        pytest.fail(f"{page}: a runs-in-tests block must be bash or python, not {lang!r}")


@pytest.mark.parametrize(("page", "block"), _tagged("params"), ids=lambda v: getattr(v, "start", v))
def test_documented_params_snippets_are_valid(
    page: str, block: re.Match[str], tmp_path: Path
) -> None:
    """The snippet, merged into the committed params.yaml, passes `imgclf check-params`."""
    merged = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in yaml.safe_load(block["body"]).items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merged))
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "check-params", str(path)],
        env=tool_env(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{page}: {proc.stderr}"


def test_documented_params_errors_are_the_real_messages() -> None:
    tables = _tagged("params-errors")
    assert tables
    checked = 0
    for page, table in tables:
        for row in table["table"].splitlines()[2:]:
            typed, got = (cell.strip() for cell in row.strip("|").split("|")[:2])
            override = re.search(r"-S \+?([\w.]+)=(\S+?)`", typed)
            if not (override and got.startswith("`")):
                continue  # DVC's own refusal, not our validation
            raw: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
            *parents, leaf = override[1].split(".")
            node = raw
            for key in parents:
                node = node[key]
            node[leaf] = yaml.safe_load(override[2])
            with pytest.raises(ParamsError) as err:
                validate_params(raw)
            for piece in got.strip("`").split("…"):
                assert piece.strip(" ,") in str(err.value), f"{page}: {typed}"
            checked += 1
    assert checked >= 3

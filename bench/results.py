"""bench/RESULTS.md as one section per scenario: each run *replaces* its scenario's section.

Each section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and holds
the latest table, the machine line (CPU model, cores, date) and the command that re-runs
it; older numbers live in git history, not in an ever-growing log. A scenario not in the
file yet is appended at the end. Every bench script takes the same options
(:func:`add_options`): a full run writes ``bench/RESULTS.md`` (or ``--results PATH``),
``--quick`` writes only where ``--results`` says, ``--no-record`` writes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from common import machine

RESULTS = Path(__file__).with_name("RESULTS.md")
HEAD = (
    "# Benchmark results\n\n"
    "The latest run of each scenario, one section each; every bench script replaces its own\n"
    "section (between its `<!-- bench:… -->` markers) and older numbers stay in git history.\n"
)


def begin(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def section(name: str, title: str, body: str, rerun: str, when: dt.datetime | None = None) -> str:
    """A scenario's whole section, markers included: title, machine and date, re-run, body."""
    stamp = (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{begin(name)}\n## {title}\n\n"
        f"- machine: {machine()}; {stamp}\n"
        f"- re-run: `{rerun}`\n\n"
        f"{body.strip()}\n{end(name)}\n"
    )


def replace(text: str, name: str, new_section: str) -> str:
    """``text`` with scenario ``name``'s section replaced by ``new_section`` (or appended)."""
    pattern = re.compile(re.escape(begin(name)) + r".*?" + re.escape(end(name)) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: new_section, text, count=1)
    if not text:
        text = HEAD
    return text.rstrip("\n") + "\n\n" + new_section


def write(path: Path, name: str, new_section: str) -> None:
    """Replace scenario ``name``'s section of the file at ``path`` (created if missing)."""
    old = path.read_text() if path.exists() else ""
    path.write_text(replace(old, name, new_section))


def add_options(parser: argparse.ArgumentParser) -> None:
    """--results / --no-record, the same in every bench script (``--quick`` is each one's)."""
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"file whose section this run replaces [{RESULTS.name}; --quick: none]",
    )
    parser.add_argument("--no-record", action="store_true", help="print only")


def target(args: argparse.Namespace) -> Path | None:
    """Where this run's section goes: None for ``--no-record`` and for ``--quick`` runs
    without an explicit ``--results`` (quick numbers never land in bench/RESULTS.md)."""
    quick = getattr(args, "quick", False)
    if getattr(args, "no_record", False):
        return None
    if args.results is not None:
        if quick and args.results.resolve() == RESULTS.resolve():
            print(f"--quick: not writing {RESULTS} (pass another --results file)", flush=True)
            return None
        return args.results
    return None if quick else RESULTS


def report(args: argparse.Namespace, name: str, title: str, body: str, rerun: str) -> Path | None:
    """Print the section and write it where :func:`target` says; returns that path."""
    text = section(name, title + (" (quick)" if getattr(args, "quick", False) else ""), body, rerun)
    print("\n" + text, flush=True)
    path = target(args)
    if path is not None:
        write(path, name, text)
        print(f"replaced the {name!r} section of {path}", flush=True)
    return path

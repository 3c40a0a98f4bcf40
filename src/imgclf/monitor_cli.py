"""``imgclf drift-report`` and ``imgclf collect``: the monitoring loop's commands.

Registered on the ``imgclf`` app by :mod:`imgclf.cli`; kept apart so that file stays
about the pipeline. Both read the database the API writes (``IMGCLF_MONITOR_DB``,
``monitoring/requests.db`` under ``make serve``), read-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DB = Path("monitoring/requests.db")
DEFAULT_SAMPLES = Path("monitoring/samples")


def _db(db: Path | None) -> Path:
    return db or Path(os.environ.get("IMGCLF_MONITOR_DB") or DEFAULT_DB)


DbOpt = Annotated[
    Path | None,
    typer.Option(help=f"Monitoring database [default: $IMGCLF_MONITOR_DB or {DEFAULT_DB}]."),
]


def drift_report(
    since: Annotated[str, typer.Option(help="Window start: 1h, 30m, 2d … or ISO-8601.")] = "1d",
    until: Annotated[str | None, typer.Option(help="Window end (default: now).")] = None,
    db: Annotated[
        list[Path] | None,
        typer.Option(
            help=f"Monitoring database, repeatable: one per replica [default: "
            f"$IMGCLF_MONITOR_DB or {DEFAULT_DB}]."
        ),
    ] = None,
    reference: Annotated[Path, typer.Option(help="Reference profile written by evaluate.")] = Path(
        "models/reference.json"
    ),
    out: Annotated[Path, typer.Option(help="Folder for the HTML, markdown and JSON.")] = Path(
        "reports/drift"
    ),
    all_versions: Annotated[
        bool, typer.Option(help="Include traffic served by other model versions.")
    ] = False,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when drift is found.")] = False,
) -> None:
    """Compare served traffic in a window with the reference profile: HTML + markdown + JSON."""
    import time

    from imgclf.drift import build_report, write_outputs
    from imgclf.profile import load_reference
    from imgclf.traffic import TrafficError, load_traffic, parse_time

    try:
        now = time.time()
        start = parse_time(since, now)
        end = parse_time(until, now) if until else now
        if end <= start:
            raise TrafficError(
                f"the window is empty: --since {since} is not before --until {until}"
            )
        ref = load_reference(reference)
        version = None if all_versions else ref.model_sha256[:12]
        traffic = load_traffic(db or [_db(None)], start, end, version)
    except (TrafficError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    result, snapshot = build_report(ref, traffic)
    paths = write_outputs(result, snapshot, out)
    for s in result.sections:
        typer.echo(
            f"{s.title}: {s.verdict} (reference {s.reference_rows}, served {s.current_rows})"
        )
    if result.excluded_rows:
        typer.echo(f"left out: {sum(result.excluded_rows.values())} predictions of other models")
    typer.echo(f"wrote {paths['html']}, {paths['markdown']}, {paths['json']}")
    if fail_on_drift and result.drifted:
        raise typer.Exit(1)


def collect(
    out: Annotated[Path, typer.Option(help="ImageFolder to create or add to (data/raw/NAME).")],
    labels: Annotated[
        str | None,
        typer.Option(help="Filled-in labelling sheet, or 'predicted' for the model's answers."),
    ] = None,
    db: DbOpt = None,
    samples: Annotated[
        Path | None,
        typer.Option(help=f"Sample folder [default: $IMGCLF_SAMPLE_DIR or {DEFAULT_SAMPLES}]."),
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only samples from: 7d, ISO-8601 …")] = None,
) -> None:
    """Sampled uploads → a labelling sheet, then (--labels) an ImageFolder for `dvc add`."""
    from imgclf.collect import CollectError
    from imgclf.collect import collect as run
    from imgclf.traffic import TrafficError, parse_time

    sample_dir = samples or Path(os.environ.get("IMGCLF_SAMPLE_DIR") or DEFAULT_SAMPLES)
    try:
        start = parse_time(since) if since else None
        done, counts, blank = run(_db(db), sample_dir, out, labels, start)
    except (CollectError, TrafficError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. --out names a file, or a read-only disk
        typer.echo(f"error: cannot write under {out}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(done)
    if counts:
        typer.echo("per class: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
        if blank:
            typer.echo(f"{blank} rows without a label were skipped")
        typer.echo(f"next: dvc add {out} && git add {out}.dvc && open a PR (README, Monitoring)")
    else:
        typer.echo(f"next: fill in the label column, then: imgclf collect --out {out} "
                   f"--labels {out}.labels.csv")  # fmt: skip

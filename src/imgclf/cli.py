"""The ``imgclf`` command: local predictions, serving, and helpers around the pipeline.

One module for every subcommand, so ``imgclf --help`` and this file list the same
things. Each command imports what it needs inside its body: ``imgclf --help`` stays
fast, and a command whose optional extra is missing says which one to install
(:func:`_require_extra`) instead of printing a traceback. The monitoring commands
(``drift-report``, ``collect``) read the database the API writes
(``IMGCLF_MONITOR_DB``, ``monitoring/requests.db`` under ``make serve``), read-only.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer

from imgclf.pipeline.outputs import REFERENCE

app = typer.Typer(
    help="imgclf: reproducible image classification (the pipeline itself runs with `dvc repro`).",
    no_args_is_help=True,
    add_completion=False,
)

# Optional parts of the install: extra name → what it is for (pyproject.toml's extras).
EXTRAS = {
    "monitor": "the drift report (Evidently, pandas)",
    "serve": "the API (onnxruntime, FastAPI, uvicorn)",
}


def _require_extra(extra: str, *modules: str) -> None:
    """Exit with one line that says what to install when an optional extra is missing."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        typer.echo(
            f"error: this command needs the '{extra}' extra ({EXTRAS[extra]}; "
            f"missing: {', '.join(missing)}): pip install -e '.[{extra}]'",
            err=True,
        )
        raise typer.Exit(2)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    model_dir: Annotated[Path, typer.Option(help="Folder with model.onnx and model.json.")] = Path(
        "models"
    ),
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per image, as the API answers.")
    ] = False,
    session: Annotated[
        str,
        typer.Option(
            help="fast: the API's session, checked against evaluate's golden batch; "
            "portable: exactly the session evaluate scored with."
        ),
    ] = "fast",
) -> None:
    """Top-k classes for local image files, with the exact artifact that is served, and
    whether each image looks like the training images (the API's OOD flag)."""
    import json

    import numpy as np

    from imgclf.artifact.agreement import load_served
    from imgclf.artifact.integrity import ModelIntegrityError
    from imgclf.artifact.predictor import ModelNotFoundError
    from imgclf.data.preprocessing import ImageError, preprocess
    from imgclf.ood.detector import load_detector

    try:
        predictor, check = load_served(model_dir, session=session)
    except (ModelNotFoundError, ModelIntegrityError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if check.status in ("fallback", "unchecked"):
        typer.echo(f"note: {check.detail}", err=True)
    try:
        detector = load_detector(model_dir, predictor.card["model_sha256"])
    except (OSError, ValueError) as exc:
        detector = None
        typer.echo(f"note: no out-of-distribution flag: {exc}", err=True)
    failed = 0
    for path in images:
        try:
            data = path.read_bytes()
            pixels = preprocess(data, predictor.spec)[None]
        except (OSError, ImageError) as exc:
            typer.echo(f"{path}: error: {exc}", err=True)
            failed += 1
            continue
        probs, embedding = predictor.predict_with_embedding(pixels)
        result = predictor.to_prediction(probs[0])
        verdict = detector.judge_uploads(pixels, embedding, [data])[0] if detector else None
        ood = verdict.as_json() if verdict else {"in_distribution": None, "ood_score": None}
        if as_json:
            top = dict(result.top(top_k))
            line = {"path": str(path), "label": result.label, "confidence": result.confidence,
                    "top": {k: float(np.round(v, 6)) for k, v in top.items()}, **ood}  # fmt: skip
            typer.echo(json.dumps(line))
            continue
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top(top_k))
        flag = ""
        if verdict is not None and not verdict.in_distribution:
            more = f" (+{len(verdict.reasons) - 1} more)" if len(verdict.reasons) > 1 else ""
            flag = f"  [out of distribution, score {verdict.score:.2f}: {verdict.reasons[0]}{more}]"
        typer.echo(f"{path}: {result.label} ({ranked}){flag}")
    if failed:
        raise typer.Exit(1)


@app.command("verify-model")
def verify_model(
    model_dir: Annotated[Path, typer.Option(help="Folder with model.onnx and model.json.")] = Path(
        "models"
    ),
    evaluated: Annotated[
        Path | None,
        typer.Option(help="evaluate.json that must name the same model (metrics/evaluate.json)."),
    ] = None,
) -> None:
    """Check model.onnx against its card's sha256 (and the metrics): exit 1 if it was changed."""
    from imgclf.artifact.integrity import ModelIntegrityError
    from imgclf.artifact.integrity import verify_model as verify
    from imgclf.errors import ModelNotFoundError

    try:
        sha = verify(model_dir, evaluated)
    except (ModelIntegrityError, ModelNotFoundError) as exc:
        typer.echo(f"error: model integrity check failed: {exc}", err=True)
        raise typer.Exit(1) from None
    against = "model.json" + (f" and {evaluated}" if evaluated else "")
    typer.echo(f"ok: {model_dir / 'model.onnx'} sha256 {sha} matches {against}")


@app.command("check-params")
def check_params(
    path: Annotated[Path, typer.Argument(help="The params file to validate.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Validate params.yaml against the schema (what every stage does first)."""
    from imgclf.artifact.int8_policy import check_export
    from imgclf.params import ParamsError, load_params

    try:
        check_export(load_params(path))
    except ParamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{path} is valid")


@app.command("check-lock")
def check_lock(
    base: Annotated[str, typer.Option(help="Git revision holding the committed lock.")] = "HEAD",
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
) -> None:
    """After `dvc repro`: is the result the committed dvc.lock/metrics, or within noise of it?

    Exit 0 when bit-identical or when only numerics differ within noise; 1 when an input
    differs (stale lock, undeclared dep) or the metrics differ beyond noise; 2 when the
    check cannot run.
    """
    from imgclf.pipeline.lockcheck import LockCheckError
    from imgclf.pipeline.lockcheck import check_lock as run_check

    try:
        verdict = run_check(repo, base)
    except LockCheckError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(verdict.render())
    if not verdict.ok:
        raise typer.Exit(1)


IMAGES_HELP = (
    "Also draw the report's pictures (PNG + JSON manifests) into this folder and link them "
    "from the markdown, relative to --out (docs/pull-requests.md, Pictures)."
)


def _link(images: Path, out: Path | None) -> str:
    """The images folder as the markdown file sees it (relative to --out, or the cwd)."""
    start = (out.parent if out is not None else Path()).resolve()
    return Path(os.path.relpath(images.resolve(), start)).as_posix()


@app.command()
def report(
    base: Annotated[str, typer.Option(help="Git revision to compare with (e.g. main).")] = "main",
    out: Annotated[Path | None, typer.Option(help="Markdown file to write (default: stdout).")] = (
        None
    ),
    label: Annotated[str, typer.Option(help="Column name for this revision.")] = "workspace",
    images: Annotated[Path | None, typer.Option(help=IMAGES_HELP)] = None,
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
) -> None:
    """Markdown comparing the workspace's model with BASE: metrics, params, noise test, and
    with --images the flipped test images, training curves and confusion change."""
    from imgclf.report.pr_report import model_report
    from imgclf.report.revisions import ReportError

    try:
        link = _link(images, out) if images is not None else "images"
        text = model_report(repo, base, label=label, images=images, link=link)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _write(text, out)


@app.command("data-report")
def data_report(
    base: Annotated[str, typer.Option(help="Git revision to compare with (e.g. main).")] = "main",
    out: Annotated[Path | None, typer.Option(help="Markdown file to write (default: stdout).")] = (
        None
    ),
    label: Annotated[str, typer.Option(help="Column name for this revision.")] = "workspace",
    images: Annotated[Path | None, typer.Option(help=IMAGES_HELP)] = None,
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
    label_issues: Annotated[
        bool,
        typer.Option(
            help="Also rank likely label errors of data/prepared's training split "
            "(a few seconds per thousand images; see `imgclf label-issues`)."
        ),
    ] = False,
) -> None:
    """Markdown dataset report (class counts, image sizes, skipped files) against BASE; with
    --images, example images of added classes and the skipped files."""
    from imgclf.report.data_changes import data_report as build
    from imgclf.report.revisions import ReportError

    try:
        link = _link(images, out) if images is not None else "images"
        text = build(repo, base, label=label, images=images, link=link, label_issues=label_issues)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _write(text, out)


@app.command("label-issues")
def label_issues(
    prepared: Annotated[Path, typer.Argument(help="A prepared folder.")] = Path("data/prepared"),
    top: Annotated[int, typer.Option(help="Rows to print.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 42,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every flagged image to this JSON file.")
    ] = None,
) -> None:
    """Training images whose label the data most likely contradicts, most likely first."""
    from imgclf.data.prepared_files import read_index
    from imgclf.evaluation.label_issues import as_dicts, find_issues, markdown
    from imgclf.jsonio import write_json

    if not (prepared / "train.npy").is_file():
        typer.echo(f"error: {prepared} has no train.npy: run `dvc repro prepare` first", err=True)
        raise typer.Exit(2)
    issues = find_issues(prepared, seed=seed)
    n_train = len(read_index(prepared, "train"))
    typer.echo("\n".join(markdown(issues, n_train, top)))
    if json_out is not None:
        write_json(json_out, {"n_train": n_train, "issues": as_dicts(issues)})
        typer.echo(f"wrote {json_out}", err=True)


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


RemoteOpt = Annotated[
    str | None, typer.Option("--remote", "-r", help="DVC remote name (default: the default).")
]


@app.command("remote-check")
def remote_check(remote: RemoteOpt = None) -> None:
    """Check the DVC remote: configured, credentials found, reachable, bucket exists."""
    from imgclf.pipeline.remote import RemoteError, check_remote

    try:
        _, line = check_remote(Path(), remote)
    except RemoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(line)


def _transfer(command: str, remote: str | None, targets: list[str] | None) -> None:
    from imgclf.pipeline.remote import RemoteError, run_dvc

    try:
        code = run_dvc(Path(), command, list(targets or []), remote)
    except RemoteError as exc:
        typer.echo(f"error: dvc {command} failed: {exc}", err=True)
        raise typer.Exit(3) from None
    if code:
        raise typer.Exit(code)


@app.command()
def push(
    targets: Annotated[list[str] | None, typer.Argument(help="Stages or outputs.")] = None,
    remote: RemoteOpt = None,
) -> None:
    """`dvc push` with a clear message when the remote is down, missing or locked."""
    _transfer("push", remote, targets)


@app.command()
def pull(
    targets: Annotated[list[str] | None, typer.Argument(help="Stages or outputs.")] = None,
    remote: RemoteOpt = None,
) -> None:
    """`dvc pull` with a clear message when the remote is down, missing or locked."""
    _transfer("pull", remote, targets)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder with model.onnx and model.json [default: $IMGCLF_MODEL_DIR or models]."
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the model over HTTP (`imgclf.serving.app`; limits from IMGCLF_* variables)."""
    _require_extra("serve", "onnxruntime", "fastapi", "uvicorn", "multipart")
    from imgclf.serving.processes import serve as run
    from imgclf.serving.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if model_dir is not None:
        settings = settings.with_model_dir(model_dir)
    run(settings, host=host, port=port, access_log=access_log)


# The monitoring loop (docs/monitoring.md): served traffic vs the reference, and back to data.


DEFAULT_DB = Path("monitoring/requests.db")
DEFAULT_SAMPLES = Path("monitoring/samples")


def _db(db: str | None) -> str:
    return db or os.environ.get("IMGCLF_MONITOR_DB") or str(DEFAULT_DB)


DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--source",
        help="Monitoring database, or the fleet's shards: gs://BUCKET/PREFIX or a folder "
        f"(IMGCLF_MONITOR_URL) [default: $IMGCLF_MONITOR_DB or {DEFAULT_DB}].",
    ),
]


@app.command("drift-report")
def drift_report(
    since: Annotated[str, typer.Option(help="Window start: 1h, 30m, 2d … or ISO-8601.")] = "1d",
    until: Annotated[str | None, typer.Option(help="Window end (default: now).")] = None,
    db: Annotated[
        list[str] | None,
        typer.Option(
            "--db",
            "--source",
            help="Monitoring database, repeatable: one per replica; or the fleet's shards, "
            "gs://BUCKET/PREFIX or a folder (IMGCLF_MONITOR_URL): only the shards that overlap "
            f"the window are read [default: $IMGCLF_MONITOR_DB or {DEFAULT_DB}].",
        ),
    ] = None,
    reference: Annotated[Path, typer.Option(help="Reference profile written by evaluate.")] = Path(
        REFERENCE
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
    import tempfile
    import time

    _require_extra("monitor", "evidently", "pandas")
    from imgclf.evaluation.reference_profile import load_reference
    from imgclf.monitoring.drift_report import build_report, write_outputs
    from imgclf.monitoring.shards import ShardError, is_fleet_source, local_paths
    from imgclf.monitoring.traffic import TrafficError, load_traffic, parse_time

    cache = tempfile.TemporaryDirectory(prefix="imgclf-shards-")
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
        sources = db or [_db(None)]
        paths = local_paths(sources, start, end, Path(cache.name))
        named = {Path(s) for s in sources if not is_fleet_source(s)}
        from_fleet = [p for p in paths if p not in named]
        traffic = load_traffic(paths, start, end, version, from_fleet=from_fleet)
    except (TrafficError, ShardError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        cache.cleanup()
    if any(is_fleet_source(s) for s in db or []):
        typer.echo(f"read {len(paths)} shards/files overlapping the window")
    result, snapshot = build_report(ref, traffic)
    paths = write_outputs(result, snapshot, out)
    for s in result.sections:
        typer.echo(
            f"{s.title}: {s.verdict} (reference {s.reference_rows}, served {s.current_rows})"
        )
    if result.excluded_rows:
        typer.echo(f"left out: {sum(result.excluded_rows.values())} predictions of other models")
    if result.unreadable:
        typer.echo(
            f"left out, unreadable: {result.unreadable['rows']} rows, "
            f"{result.unreadable['files']} files ({', '.join(traffic.unreadable_files[:5])})"
        )
    typer.echo(f"wrote {paths['html']}, {paths['markdown']}, {paths['json']}")
    if fail_on_drift and result.drifted:
        raise typer.Exit(1)


@app.command()
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
    """Sampled uploads → a labelling sheet, then (--labels) an ImageFolder for `dvc add`.

    With a bucket (--db gs://…), the samples come from the bucket too (its samples/).
    """
    import tempfile
    from functools import partial

    from imgclf.monitoring.collect import CollectError
    from imgclf.monitoring.collect import collect as run
    from imgclf.monitoring.shards import (
        SAMPLES,
        ShardError,
        fetch_samples,
        is_fleet_source,
        local_paths,
    )
    from imgclf.monitoring.traffic import TrafficError, parse_time

    source = _db(db)
    sample_dir = samples or Path(os.environ.get("IMGCLF_SAMPLE_DIR") or DEFAULT_SAMPLES)
    remote = is_fleet_source(source) and samples is None
    if remote and not source.startswith("gs://"):  # a folder: its samples/ are local files
        sample_dir, remote = Path(source.removeprefix("file://")) / SAMPLES, False
    try:
        with tempfile.TemporaryDirectory(prefix="imgclf-shards-") as cache:
            fetch = partial(fetch_samples, source, dest=Path(cache) / "dl") if remote else None
            start = parse_time(since) if since else None
            window = (start if start is not None else float("-inf"), float("inf"))
            paths = local_paths([source], *window, Path(cache))
            done, counts, blank = run(paths, sample_dir, out, labels, start, fetch)
    except (CollectError, TrafficError, ShardError) as exc:
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
        typer.echo(f"next: dvc add {out} && git add {out}.dvc && open a PR (docs/monitoring.md)")
    else:
        typer.echo(f"next: fill in the label column, then: imgclf collect --out {out} "
                   f"--labels {out}.labels.csv")  # fmt: skip


# ---- releases: the model registry in git tags (docs/releases.md) -------------------------
release_app = typer.Typer(
    help="The model registry (GTO git tags): register, promote, gate, roll back, check live.",
    no_args_is_help=True,
)
app.add_typer(release_app, name="release")
RepoOpt = Annotated[Path, typer.Option(help="Repository root.")]
PushOpt = Annotated[bool, typer.Option(help="Push the new tag to origin (CI gates it).")]


def _release_error(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from None


@release_app.command("register")
def release_register(
    rev: Annotated[str, typer.Argument(help="Commit to register (its lock names the model).")] = (
        "HEAD"
    ),
    version: Annotated[str | None, typer.Option(help="Explicit version, e.g. v1.0.0.")] = None,
    bump: Annotated[str, typer.Option(help="major | minor | patch of the latest version.")] = (
        "minor"
    ),
    push: PushOpt = False,
    repo: RepoOpt = Path(),
) -> None:
    """Register a commit as a new model version (tag NAME@vX.Y.Z)."""
    from imgclf.release.registry import ReleaseError, register

    if bump not in ("major", "minor", "patch"):
        _release_error(ValueError(f"--bump {bump!r}: one of major, minor, patch"))
    try:
        v = register(repo, rev, version=version, bump=bump, push=push)
    except ReleaseError as exc:
        _release_error(exc)
    typer.echo(f"registered {v.version} at {v.commit[:12]} (tag {v.tag})")


@release_app.command("promote")
def release_promote(
    version: Annotated[str, typer.Argument(help="A registered version, e.g. v1.2.0.")],
    stage: Annotated[str, typer.Argument(help="staging | prod (in that order).")],
    push: PushOpt = False,
    repo: RepoOpt = Path(),
) -> None:
    """Promote a version to a stage (tag NAME#STAGE#N); CI's gate decides if it stands."""
    from imgclf.release.registry import ReleaseError, promote

    try:
        p = promote(repo, version, stage, push=push)
    except ReleaseError as exc:
        _release_error(exc)
    typer.echo(f"promoted {p.version} to {p.stage} (tag {p.tag})")


@release_app.command("rollback")
def release_rollback(
    stage: Annotated[str, typer.Argument(help="The stage to roll back.")] = "prod",
    push: PushOpt = False,
    repo: RepoOpt = Path(),
) -> None:
    """Put the version that held the stage before the current one back in it."""
    from imgclf.release.registry import ReleaseError, rollback

    try:
        p = rollback(repo, stage, push=push)
    except ReleaseError as exc:
        _release_error(exc)
    typer.echo(f"rolled {stage} back to {p.version} (tag {p.tag})")


@release_app.command("show")
def release_show(repo: RepoOpt = Path()) -> None:
    """Each stage's version, and every version with its headline metrics."""
    from imgclf.release.registry import ReleaseError
    from imgclf.release.show import render

    try:
        typer.echo(render(repo), nl=False)
    except ReleaseError as exc:
        _release_error(exc)


@release_app.command("gate")
def release_gate(
    tag: Annotated[str, typer.Argument(help="The pushed registry tag, e.g. imgclf#prod#7.")],
    main: Annotated[str, typer.Option(help="The branch a release must be on.")] = "origin/main",
    allow_data_change: Annotated[
        bool, typer.Option(help="Pass a promotion whose test split differs (not comparable).")
    ] = False,
    summary: Annotated[Path | None, typer.Option(help="Append the verdict (markdown).")] = None,
    output: Annotated[Path | None, typer.Option(help="Append key=value ($GITHUB_OUTPUT).")] = None,
    repo: RepoOpt = Path(),
) -> None:
    """The promotion gate: exit 1 (with the reason) for a tag that must not stand."""
    from imgclf.release.gate import check
    from imgclf.release.registry import ReleaseError

    try:
        result = check(repo, tag, main=main, allow_data_change=allow_data_change)
    except ReleaseError as exc:
        _release_error(exc)
    text = result.markdown()
    typer.echo(text, nl=False)
    if summary is not None:
        with summary.open("a") as f:
            f.write(text)
    if output is not None:
        with output.open("a") as f:
            f.write(f"verdict={result.verdict}\nversion={result.version}\n"
                    f"stage={result.stage}\ncommit={result.commit}\n")  # fmt: skip
    if not result.ok:
        raise typer.Exit(1)


@release_app.command("check-live")
def release_check_live(
    endpoint: Annotated[
        list[str], typer.Option(help="STAGE=URL of a deployed API (repeat per stage).")
    ],
    out: Annotated[Path | None, typer.Option(help="Markdown file to write.")] = None,
    repo: RepoOpt = Path(),
) -> None:
    """Exit 1 when an endpoint does not serve its stage's registered version."""
    from imgclf.release.live import check, render
    from imgclf.release.registry import ReleaseError

    endpoints = {}
    for item in endpoint:
        stage, sep, url = item.partition("=")
        if not sep or not url:
            _release_error(ValueError(f"--endpoint {item!r}: expected STAGE=URL"))
        endpoints[stage.strip()] = url.strip()
    try:
        findings = check(repo, endpoints)
    except ReleaseError as exc:
        _release_error(exc)
    text = render(findings)
    _write(text, out)
    for f in findings:
        typer.echo(f"{f.stage}: {'ok' if f.ok else 'MISMATCH'}: {f.detail}")
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()

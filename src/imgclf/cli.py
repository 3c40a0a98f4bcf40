"""The ``imgclf`` command: local predictions and helpers around the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgclf import monitor_cli

app = typer.Typer(
    help="imgclf: reproducible image classification (the pipeline itself runs with `dvc repro`).",
    no_args_is_help=True,
    add_completion=False,
)


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
) -> None:
    """Top-k classes for local image files, with the exact artifact that is served, and
    whether each image looks like the training images (the API's OOD flag)."""
    import json

    import numpy as np

    from imgclf.integrity import ModelIntegrityError
    from imgclf.ood import load_detector
    from imgclf.predictor import ModelNotFoundError, Predictor
    from imgclf.preprocessing import ImageError, preprocess

    try:
        predictor = Predictor(model_dir)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
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
    from imgclf.integrity import ModelIntegrityError
    from imgclf.integrity import verify_model as verify

    try:
        sha = verify(model_dir, evaluated)
    except ModelIntegrityError as exc:
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
    from imgclf.params import ParamsError, load_params

    try:
        load_params(path)
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
    from imgclf.lockcheck import LockCheckError
    from imgclf.lockcheck import check_lock as run_check

    try:
        verdict = run_check(repo, base)
    except LockCheckError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(verdict.render())
    if not verdict.ok:
        raise typer.Exit(1)


@app.command()
def report(
    base: Annotated[str, typer.Option(help="Git revision to compare with (e.g. main).")] = "main",
    out: Annotated[Path | None, typer.Option(help="Markdown file to write (default: stdout).")] = (
        None
    ),
    label: Annotated[str, typer.Option(help="Column name for this revision.")] = "workspace",
    images: Annotated[
        bool, typer.Option(help="Link PNG plots (only where image publishing is enabled).")
    ] = False,
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
) -> None:
    """Markdown comparing the workspace's model with BASE: metrics, params, noise test."""
    from imgclf.report import ReportError, model_report

    try:
        text = model_report(repo, base, label=label, images=images)
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
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path(),
) -> None:
    """Markdown dataset report (class counts, image sizes, skipped files) against BASE."""
    from imgclf.data_report import data_report as build
    from imgclf.revisions import ReportError

    try:
        text = build(repo, base, label=label)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _write(text, out)


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
    from imgclf.remote import RemoteError, check_remote

    try:
        _, line = check_remote(Path(), remote)
    except RemoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(line)


def _transfer(command: str, remote: str | None, targets: list[str] | None) -> None:
    from imgclf.remote import RemoteError, run_dvc

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
    """Serve the model over HTTP (the API of `imgclf.api`; limits from IMGCLF_* variables)."""
    from imgclf.api import run
    from imgclf.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if model_dir is not None:
        settings = settings.with_model_dir(model_dir)
    run(settings, host=host, port=port, access_log=access_log)


# The monitoring loop (README, Monitoring): served traffic vs the reference, and back to data.
app.command("drift-report")(monitor_cli.drift_report)
app.command()(monitor_cli.collect)


if __name__ == "__main__":  # pragma: no cover
    app()

"""The ``imgclf`` command: local predictions and helpers around the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Top-k classes for local image files, with the exact artifact that is served."""
    from imgclf.predictor import ModelNotFoundError, Predictor
    from imgclf.preprocessing import ImageError

    try:
        predictor = Predictor(model_dir)
    except ModelNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    failed = 0
    for path in images:
        try:
            (result,) = predictor.predict_images([path.read_bytes()])
        except (OSError, ImageError) as exc:
            typer.echo(f"{path}: error: {exc}", err=True)
            failed += 1
            continue
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top(top_k))
        typer.echo(f"{path}: {result.label} ({ranked})")
    if failed:
        raise typer.Exit(1)


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


if __name__ == "__main__":  # pragma: no cover
    app()

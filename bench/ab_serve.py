"""A/B of server variants: ``imgclf serve`` from several source trees or settings at once.

Why: on the shared 2-core VM the benches run on, the same code measures 5–15 % apart
from one run to the next (docs/serving-speed.md), so a change worth 5 % cannot be seen
by running the photo scenario before and after it. Here every variant is up at the same
time and the variants are driven in turns, in short slices (A, B, …, then the reverse
order), so whatever else the machine does weighs on all of them alike; each variant's
row is the median of its slices, and the first variant is the baseline of the ratio.

A variant is a ``src/`` folder (another revision's, e.g. from ``git worktree add``) plus
``IMGCLF_*`` settings; the model is a photo model built by :mod:`photo_models` (the real
pipeline, cached in ``--work``) and the load is :mod:`loadgen`'s, as in the photo scenario::

    python bench/ab_serve.py --variant main=src --variant new=../wt/src
    python bench/ab_serve.py --variant on=src --variant off=src --set off:IMGCLF_OOD=off
    python bench/ab_serve.py --quick --variant a=src --variant b=src   # seconds; records nothing

Each row: req/s (median, min–max over the slices), the ratio to the baseline's median,
the server's CPU per request and the cores it used, and its event loop's and other
threads' CPU and sleeps per request (a sleep is a wait for the GIL, for work or for the
socket; each costs CPU on this VM). The run replaces the "serve_ab" section of
bench/RESULTS.md: the latest experiment, with its ``--note``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import common
import loadgen
import results
from common import ROOT
from loadgen import Load, multipart_request
from make_photos import bench_inputs
from photo_bench import ours_cmd, warm_up
from photo_models import build

HEADER = ["variant", "src", "settings", "req/s median (min–max)", "÷ first",
          "server CPU ms/req", "cores used", "loop CPU ms/req", "loop sleeps/req",
          "other CPU ms/req", "other sleeps/req", "p50 ms", "p99 ms", "errors"]  # fmt: skip


@dataclass
class Variant:
    """One server to compare: its code, its settings and the slices it was driven for."""

    name: str
    src: Path
    env: dict[str, str] = field(default_factory=dict)
    slices: list[Load] = field(default_factory=list)

    def median(self, value: str) -> float:
        """Median over the slices of a per-request value (:meth:`~loadgen.Load.per_request`)."""
        return statistics.median(s.per_request()[value] for s in self.slices)

    def cells(self, baseline: float) -> list[str]:
        rps = [s.rps for s in self.slices]
        cores = statistics.median(s.server_cpu_s / s.seconds for s in self.slices)
        p50 = statistics.median(s.pct(50) for s in self.slices)
        p99 = statistics.median(s.pct(99) for s in self.slices)
        settings = " ".join(f"{k}={v}" for k, v in self.env.items()) or "defaults"
        return [
            self.name, _shown(self.src), settings,
            f"{statistics.median(rps):.1f} ({min(rps):.0f}–{max(rps):.0f})",
            f"{statistics.median(rps) / baseline:.3f}" if baseline else "n/a",
            f"{statistics.median(s.server_cpu_ms for s in self.slices):.2f}", f"{cores:.2f}",
            f"{self.median('loop_cpu_ms'):.2f}", f"{self.median('loop_sleeps'):.1f}",
            f"{self.median('other_cpu_ms'):.2f}", f"{self.median('other_sleeps'):.1f}",
            f"{p50:.1f}", f"{p99:.1f}", str(sum(s.errors for s in self.slices)),
        ]  # fmt: skip


def _shown(src: Path) -> str:
    """A source folder as the table shows it: relative to the checkout when inside it."""
    try:
        return src.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(src)


def parse_variants(specs: list[str], settings: list[str]) -> list[Variant]:
    """``NAME=SRC`` variants, and ``NAME:VAR=VALUE`` settings for them; a clear error for
    a malformed spec, an unknown variant, a repeated name or a ``src`` without the package."""
    variants: dict[str, Variant] = {}
    for spec in specs:
        name, sep, src = spec.partition("=")
        if not sep or not name or not src:
            raise SystemExit(f"--variant {spec!r}: expected NAME=SRC (a src/ folder)")
        if name in variants:
            raise SystemExit(f"--variant {name!r} given twice")
        path = Path(src)
        if not (path / "imgclf" / "__init__.py").is_file():
            raise SystemExit(f"--variant {name}: {src} has no imgclf package (give a src/ folder)")
        variants[name] = Variant(name, path.resolve())  # servers may run elsewhere
    for item in settings:
        name, sep, assignment = item.partition(":")
        var, eq, value = assignment.partition("=")
        if not sep or not eq or not var.startswith("IMGCLF_"):
            raise SystemExit(f"--set {item!r}: expected NAME:IMGCLF_VAR=VALUE")
        if name not in variants:
            raise SystemExit(f"--set {item!r}: no --variant named {name!r}")
        variants[name].env[var] = value
    if len(variants) < 2:
        raise SystemExit("give at least two --variant NAME=SRC to compare")
    return list(variants.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:IMGCLF_VAR=VALUE")
    parser.add_argument("--model", default="mobilenet_v3_small",
                        help="photo_models architecture, or `digits`: the checkout's models/ "
                        "and a digits PNG (its own results section)")  # fmt: skip
    parser.add_argument("--input", default="jpeg_600x400", help="one of make_photos' inputs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="slices per variant")
    parser.add_argument("--seconds", type=float, default=4.0, help="per slice")
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument("--note", default="", help="what is compared, for the results section")
    parser.add_argument("--quick", action="store_true", help="a small CNN, 2 short rounds")
    results.add_options(parser)
    args = parser.parse_args(argv)
    variants = parse_variants(args.variant, args.set)
    if args.quick:
        args.model, args.rounds, args.seconds = "small_cnn", 2, 0.5
    if args.model == "digits":  # the default pipeline's model, as `make repro` left it
        model_dir = ROOT / "models"
        if not (model_dir / "model.onnx").is_file():
            raise SystemExit("--model digits: no models/model.onnx here (run `make repro`)")
        args.input = "digits_png"
        data = (ROOT / "data/raw/digits/3/0003.png").read_bytes()
    else:
        inputs = bench_inputs(args.work / "inputs")
        if args.input not in inputs:
            raise SystemExit(f"--input {args.input!r}: one of {', '.join(inputs)}")
        data = inputs[args.input].read_bytes()
        model_dir = build(args.work, args.model, images=args.train_images)
    print(f"machine: {common.machine()}\n{common.versions()}", flush=True)
    servers = []
    try:
        for v in variants:
            port = common.free_port()
            env = common.server_env(model_dir, v.src, **v.env)
            servers.append((v, common.start_ready(ours_cmd(model_dir, port), port, env), port))
        for _, _, port in servers:
            warm_up(port, data, args.concurrency, max(0.5, args.seconds / 2))
        for r in range(args.rounds):
            for v, proc, port in servers if r % 2 == 0 else reversed(servers):
                request = multipart_request("/predict", "file", data, 1, port)
                load = loadgen.run(
                    port, request, args.concurrency, seconds=args.seconds, server_pid=proc.pid
                )
                v.slices.append(load)
    finally:
        common.stop(*(proc for _, proc, _ in servers))
    baseline = statistics.median(s.rps for s in variants[0].slices)
    table = common.table(HEADER, [v.cells(baseline) for v in variants])
    body = [
        f"- software: {common.versions()}",
        f"- {args.model} on {args.input} ({len(data) // 1024} KB), `POST /predict`, concurrency "
        f"{args.concurrency}; {args.rounds} rounds of {args.seconds:g} s slices per variant, the "
        "variants in turns (reversed every other round); medians over the slices. Client and "
        "servers share the cores.",
    ]
    if args.note:
        body.append(f"- note: {args.note}")
    body += ["", table]
    title = "Serving A/B: variants side by side (ab_serve.py)"
    rerun = "python bench/ab_serve.py --variant A=SRC --variant B=SRC …"
    # One current table per model kind: the photo A/B and the digits A/B do not replace
    # each other.
    name = "serve_ab_digits" if args.model == "digits" else "serve_ab"
    if args.model == "digits":
        title, rerun = title + ", digits", rerun + " --model digits"
    results.report(args, name, title, "\n".join(body), rerun)
    return 1 if any(s.errors for v in variants for s in v.slices) else 0


if __name__ == "__main__":
    sys.exit(main())

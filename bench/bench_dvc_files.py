"""Many files through DVC (issue 21, item 4): add, push, status and pull against gs://.

A team's ImageFolder is thousands of small files; DVC stores, uploads and checks each
one as its own object. This bench times, in a fresh git + DVC repository, the real
``dvc`` commands against a local GCS emulator (gcp-storage-emulator, in memory):
``dvc add`` of the folder, ``dvc push``, ``dvc status -c`` with nothing to do, and
``dvc pull`` into an empty cache and workspace; then the same bytes packed into tar
shards of ``--shard`` files (what webdataset-style loaders read), to see whether
packing pays.

    python bench/bench_dvc_files.py [--files 8000] [--shard 1000]
    python bench/bench_dvc_files.py --quick    # 120 files, shards of 40; records nothing
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import results
from common import free_port, table
from make_photos import make_photos_parallel


def dvc(repo: Path, *args: str) -> float:
    """Seconds one ``dvc`` command takes (it must succeed)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    exe = shutil.which("dvc", path=str(Path(os.sys.executable).parent)) or "dvc"
    start = time.perf_counter()
    proc = subprocess.run([exe, *args], cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return seconds


def repo_with_remote(path: Path, endpoint: str, prefix: str) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc(path, "init", "-q")
    dvc(path, "remote", "add", "--local", "-d", "storage", f"gs://b/{prefix}")
    dvc(path, "remote", "modify", "--local", "storage", "endpointurl", endpoint)
    dvc(path, "remote", "modify", "--local", "storage", "allow_anonymous_login", "true")
    return path


def round_trip(repo: Path, target: str) -> dict[str, float]:
    """add, push, status -c (nothing to do), then pull into an empty cache and workspace."""
    times = {"add": dvc(repo, "add", "-q", target)}
    times["push"] = dvc(repo, "push", "-q")
    times["status -c"] = dvc(repo, "status", "-c", "-q")
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / target)
    times["pull"] = dvc(repo, "pull", "-q")
    return times


def pack(files: list[Path], root: Path, out: Path, per_shard: int) -> int:
    """Uncompressed tar shards of ``per_shard`` files (sorted paths); how many."""
    out.mkdir(parents=True)
    shards = 0
    for i in range(0, len(files), per_shard):
        with tarfile.open(out / f"shard-{shards:05d}.tar", "w") as tar:
            for f in files[i : i + per_shard]:
                tar.add(f, arcname=f.relative_to(root).as_posix())
        shards += 1
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8000)
    parser.add_argument("--shard", type=int, default=1000, help="files per tar shard")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--quick", action="store_true", help="120 files, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.shard = 120, 40
    from gcp_storage_emulator import storage
    from gcp_storage_emulator.server import create_server

    # The emulator rewrites its whole metadata file (JSON of every object) on every write:
    # O(n) per upload, O(n²) per push, >15 min for 8,000 files here. In memory that file
    # is never read back, so skip it; GCS itself has no such cost.
    storage.Storage._write_config_to_file = lambda self: None

    raw = make_photos_parallel(args.data / f"imgclf-bench-photos-640x480-{args.files}",
                               args.files)  # fmt: skip
    files = sorted(raw.rglob("*.jpg"))
    size = sum(f.stat().st_size for f in files)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="b")
    server.start()
    rows = []
    try:
        endpoint = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            loose = repo_with_remote(Path(tmp) / "loose", endpoint, "loose")
            shutil.copytree(raw, loose / "photos")
            t = round_trip(loose, "photos")
            rows.append([f"{len(files):,} loose JPEGs", *(f"{t[k]:.1f} s" for k in t)])
            print(rows[-1], flush=True)
            packed = repo_with_remote(Path(tmp) / "packed", endpoint, "packed")
            shards = pack(files, raw, packed / "shards", args.shard)
            t = round_trip(packed, "shards")
            rows.append([f"{shards} tar shards of {args.shard:,}", *(f"{t[k]:.1f} s" for k in t)])
            print(rows[-1], flush=True)
    finally:
        server.stop()
    header = ["layout", "dvc add", "dvc push", "dvc status -c (up to date)", "dvc pull"]
    body = (
        f"{len(files):,} 640×480 JPEGs ({size / 2**20:,.0f} MiB), gs:// remote on a local "
        "gcp-storage-emulator (in memory, loopback: no network latency, so a real bucket "
        "adds round trips per object; the emulator's O(n) metadata rewrite per write is "
        "switched off, see the source), DVC's default jobs. Pull: into an empty cache and "
        "workspace.\n\n" + table(header, rows)
    )
    results.report(args, "dvc_files", "Many files through DVC: loose files vs tar shards", body,
                   "python bench/bench_dvc_files.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

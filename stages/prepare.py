"""Stage prepare: validate, split and decode the ImageFolder once.

Usage: python stages/prepare.py DATASET_DIR OUT_DIR REPORT_JSON
"""

import sys
from pathlib import Path

from imgclf.data.prepare import prepare
from imgclf.params import Params
from imgclf.pipeline.stage import run_stage


def main(params: Params) -> None:
    raw, out, report_path = map(Path, sys.argv[1:4])
    report = prepare(raw, out, report_path, params)
    print(
        f"{report['n_used']} images in {report['n_classes']} classes "
        f"(train/val/test {report['split']}); skipped {report['n_skipped']}: "
        f"{report['skipped_by_reason'] or 'none'} — details in {report_path}"
    )


if __name__ == "__main__":
    run_stage("prepare", main)

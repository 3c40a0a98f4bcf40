"""The dataset report: what a change did to the data, as markdown a reviewer reads.

``imgclf data-report --base main`` compares the ``metrics/prepare.json`` that ``prepare``
writes (class counts, image sizes, skipped files and why) with the base revision's, and
lists the ``*.dvc`` files that changed. Every name from the data goes through
:mod:`imgclf.report.markdown`. With an images folder it also shows example images of the
classes the change added and the files ``prepare`` skipped (:mod:`imgclf.report.pictures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imgclf.pipeline.git import git_run
from imgclf.pipeline.outputs import PREPARE
from imgclf.report import pictures
from imgclf.report.markdown import code, fit_comment, fmt, fmt_change, image_line, inline, table
from imgclf.report.revisions import (
    image_sizes,
    json_at,
    read_at,
    resolve_revision,
    rows_by,
    workspace_json,
)


def _dvc_files_changed(root: Path, commit: str) -> list[list[str]]:
    """Rows for every ``*.dvc`` file that differs from base: what DVC tracks there now."""
    proc = git_run(root, "diff", "--name-status", commit, "--", "*.dvc")
    rows = []
    for line in proc.stdout.splitlines():
        status, _, path = line.partition("\t")
        path = path.split("\t")[-1]

        def out_of(text: str | None) -> dict[str, Any]:
            if not text:
                return {}
            outs = (yaml.safe_load(text) or {}).get("outs") or [{}]
            return outs[0]

        old, new = out_of(read_at(root, path, commit)), out_of(read_at(root, path, None))
        rows.append(
            [
                code(path),
                inline({"A": "added", "D": "deleted", "M": "modified"}.get(status[:1], status)),
                f"{fmt(old.get('nfiles'))} → {fmt(new.get('nfiles'))}",
                f"{fmt(old.get('size'))} → {fmt(new.get('size'))}",
            ]
        )
    return rows


def _near_duplicates(head: dict[str, Any], t: str) -> list[str]:
    """Near-duplicate groups (kept in one split) and label conflicts, from prepare.json."""
    near = head.get("near_duplicates")
    if not isinstance(near, dict):
        return []
    groups, conflicts = near.get("groups", []), near.get("label_conflicts", [])
    lines = ["### Near-duplicates and label conflicts", ""]
    lines += [
        f"{len(groups)} groups of near-identical images ({near.get('images_in_groups', 0)} "
        f"images; hashes within {near.get('distance')} bits), each kept in one split; "
        f"{len(conflicts)} spread over two or more classes.",
        "",
    ]
    if conflicts:
        rows = [
            [", ".join(f"{code(c)}: {n}" for c, n in g["classes"].items()), g["split"],
             "<br>".join(code(f) for f in g["files"][:10])]
            for g in conflicts[:50]
        ]  # fmt: skip
        lines += ["**Label conflicts** (the same picture under two labels):", ""]
        lines += [*table(["classes (images)", "split", "files"], rows), ""]
    if groups:
        lines += [f"<details><summary>Near-duplicate groups in {code(t)} ({len(groups)})"
                  "</summary>", ""]  # fmt: skip
        for g in groups[:100]:
            lines.append(f"- {g['split']}: " + ", ".join(code(f) for f in g["files"][:10]))
        lines += ["", "</details>", ""]
    return lines


def _label_issues(root: Path) -> list[str]:
    """Likely label errors of the workspace's prepared training split."""
    from imgclf.evaluation.label_issues import find_issues, markdown

    prepared = root / "data/prepared"
    lines = ["### Likely label errors", ""]
    if not (prepared / "train.npy").is_file():
        return [*lines, f"No {code('data/prepared')} in the workspace (`dvc pull`).", ""]
    issues = find_issues(prepared)
    n_train = sum(1 for row in (prepared / "index.csv").open() if row.startswith("train,"))
    return [*lines, *markdown(issues, n_train, top=30)]


def _used(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {c for c, r in rows.items() if (r.get("used") or 0) > 0}


def data_pictures(
    root: Path, old: dict[str, Any], head: dict[str, Any], out: Path, link: str
) -> list[str]:
    """The "In pictures" lines: added classes' examples and the skipped files, if any."""
    dataset = head.get("dataset")
    source = pictures.ImageSource(root, dataset if isinstance(dataset, str) else None)
    oc, hc = rows_by(old, "classes", "class"), rows_by(head, "classes", "class")
    lines: list[str] = []
    added = sorted(_used(hc) - _used(oc)) if old else []
    removed = sorted(_used(oc) - _used(hc))
    sheet = pictures.added_classes_sheet(source, added, out)
    if sheet is not None:
        lines += [
            f"**Classes added** ({len(added)}): up to {pictures.PER_CLASS} images each.",
            "",
            image_line("example images of the added classes", link, pictures.CLASSES_ADDED_PNG),
            "",
        ]
    if removed:
        lines += [
            f"**Classes removed** ({len(removed)}): "
            + ", ".join(code(c) for c in removed[:20])
            + (" …" if len(removed) > 20 else "")
            + " — their images are not in this revision, so none are shown.",
            "",
        ]
    before = {str(i.get("path")) for i in old.get("skipped", []) if isinstance(i, dict)}
    skipped = [i for i in head.get("skipped", []) if isinstance(i, dict)]
    skipped.sort(key=lambda i: str(i.get("path")) in before)  # newly skipped first
    sheet = pictures.skipped_sheet(source, skipped, out)
    if sheet is not None:
        new = sum(str(i.get("path")) not in before for i in skipped)
        lines += [
            f"**Skipped files** ({len(skipped)}, {new} newly skipped, shown first; "
            f"{sheet['shown']} shown); one that cannot be decoded is a grey tile.",
            "",
            image_line("files skipped by prepare", link, pictures.SKIPPED_PNG),
            "",
        ]
    return ["### In pictures", "", *lines] if lines else []


def data_report(
    root: Path,
    base: str,
    label: str = "workspace",
    images: Path | None = None,
    link: str = "images",
    label_issues: bool = False,
) -> str:
    """The dataset report: class counts, image sizes, skipped files, near-duplicate groups
    and label conflicts, changes against base; with ``label_issues``, the likely label
    errors of the workspace's prepared training split.

    With ``images``, pictures of added classes and skipped files go into that folder,
    linked as ``link/NAME``.
    """
    root = root.resolve()
    commit = resolve_revision(root, base)
    head = workspace_json(root, PREPARE, "prepare")
    old = json_at(root, PREPARE, commit) or {}
    b, t = base, label
    lines = [f"## Dataset report: {code(t)} vs {code(b)} ({commit[:8]})", ""]
    cb, ct = inline(b), inline(t)  # the column headers
    if not old:
        lines += [f"> **Note:** the base revision {code(b)} has no {code(PREPARE)}.", ""]
    lines += [f"Dataset: {code(str(head.get('dataset')))}", ""]

    totals = [("images found", "n_found"), ("used", "n_used"), ("skipped", "n_skipped")]
    rows = [[n, fmt(old.get(k)), fmt(head.get(k)), fmt_change(old.get(k), head.get(k))]
            for n, k in totals]  # fmt: skip
    for split in ("train", "val", "test"):
        o, n = old.get("split", {}).get(split), head.get("split", {}).get(split)
        rows.append([f"{split} split", fmt(o), fmt(n), fmt_change(o, n)])
    lines += ["### Totals", "", *table(["", cb, ct, "change"], rows), ""]

    lines += ["### Images per class", ""]
    oc, hc = rows_by(old, "classes", "class"), rows_by(head, "classes", "class")
    rows = []
    for cls in sorted(set(oc) | set(hc)):
        o, n = oc.get(cls, {}), hc.get(cls, {})
        used = [fmt(o.get("used")), fmt(n.get("used")), fmt_change(o.get("used"), n.get("used"))]
        rows.append([code(cls), *used, *(fmt(n.get(s)) for s in ("train", "val", "test"))])
    lines += [*table(["class", f"used ({cb})", f"used ({ct})", "change", "train", "val", "test"],
                     rows), ""]  # fmt: skip

    lines += ["### Image sizes", ""]
    os_, hs = image_sizes(old), image_sizes(head)
    rows = [[inline(k.replace("_", " ")), fmt(os_.get(k)), fmt(hs.get(k))]
            for k in sorted(hs or os_)]  # fmt: skip
    lines += [*table(["", cb, ct], rows), ""]

    lines += ["### Skipped files", ""]
    ob, hb = old.get("skipped_by_reason", {}), head.get("skipped_by_reason", {})
    if not ob and not hb:
        lines += ["None skipped.", ""]
    else:
        reasons = sorted(set(ob) | set(hb))
        rows = [[inline(r), fmt(ob.get(r, 0)), fmt(hb.get(r, 0))] for r in reasons]
        lines += [*table(["reason", cb, ct], rows), ""]
        skipped = head.get("skipped", [])
        if skipped:
            lines += [f"<details><summary>Skipped in {code(t)} ({len(skipped)})</summary>", ""]
            for item in skipped[:100]:
                if isinstance(item, dict):
                    lines.append(f"- {code(str(item.get('path')))}: {inline(item.get('reason'))}")
                else:
                    lines.append(f"- {code(str(item))}")
            lines += ["", "</details>", ""]

    lines += _near_duplicates(head, t)
    if label_issues:
        lines += _label_issues(root)
    if images is not None:
        lines += data_pictures(root, old, head, images, link)

    lines += ["### Tracked data that changed", ""]
    rows = _dvc_files_changed(root, commit)
    if rows:
        lines += [*table(["file", "status", "files", "bytes"], rows), ""]
    else:
        lines += ["No `.dvc` file changed.", ""]
    lines += ["<sub>Generated by `imgclf data-report` from `metrics/prepare.json`.</sub>", ""]
    return fit_comment("\n".join(lines))

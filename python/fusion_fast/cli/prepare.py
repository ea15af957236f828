"""`fusion-fast prepare`: downloaded (or Hub) files -> an indexed FUSION playground, checked."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from .output import console, count, human_bytes

if TYPE_CHECKING:
    from ..archives import ImageUnit, Marker
    from ..prepare import Plan, PrepareResult, Preview


def _jobs(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--jobs must be at least 1")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn downloaded (or Hugging Face Hub) FUSION data into an indexed, checked playground",
        description=(
            "Link annotation files into PLAYGROUND/train/jsons/, extract image archives into "
            "PLAYGROUND/train/images/ (or, with --images shards, index them into an image store there), "
            "nested so that the records' image paths resolve, write a "
            "stage YAML, index every file and run `fusion-fast check` on the YAML. Safe to interrupt and "
            "re-run: what is in place is skipped."
        ),
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of downloaded files, or a Hugging Face dataset id such as "
        "starriver030515/FUSION-Pretrain-10M",
    )
    p.add_argument(
        "--root", default="playground", metavar="PLAYGROUND", help="the playground (default: %(default)s)"
    )
    p.add_argument("--stage", default=None, metavar="NAME", help="stage name: the YAML is train/NAME.yaml")
    p.add_argument("--yaml", default=None, metavar="OUT.yaml", help="where to write the stage YAML")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="archives extracted (with --images shards: converted) at once (default: %(default)s)",
    )
    p.add_argument(
        "--images",
        choices=("extract", "shards"),
        default="extract",
        help="extract: unpack image archives into files under images/ (the default: FUSION's own training "
        "code and any other tool open image files by path); shards: keep the images in their archives "
        "(gzip, bzip2 and xz tars and split parts converted once into plain tar shards) and index them "
        "into images/.fusion-fast/images.ffimg, read by fusion-fast's dataset, check and "
        "fusion_fast.images: far faster to prepare, no inode per image, large sequential files that "
        "cluster filesystems serve well (default: %(default)s)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument(
        "--no-size-limits",
        action="store_true",
        help="extract archives even when they expand past the free space or to more than 100 times "
        "their size (refused by default: a full disk, or a decompression bomb)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="take only files whose path matches (repeatable; e.g. 'json/*' 'images/PixelProse*')",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result (with --dry-run: the plan) as JSON instead of tables",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..archives import DEFAULT_LIMITS
    from ..prepare import plan_prepare, preview_units, resolve_source, run_prepare
    from .output import Progress, print_json

    _check_source(args.source)
    source, name = resolve_source(args.source, revision=args.revision, include=args.include)
    plan = plan_prepare(
        source,
        args.root,
        name=name,
        stage=args.stage,
        yaml_path=args.yaml,
        include=args.include,
        images=args.images,
    )
    if args.dry_run:
        previews = preview_units(plan)
        if args.json:
            print_json(plan_json(plan, previews))
        else:
            print_plan(plan, previews)
        return 0
    work = sum(u.stamp.size for u in plan.units if u.todo)
    with Progress() as bar:
        task = bar.task("extracting" if plan.images == "extract" else "indexing", work, "bytes", bar=work > 0)
        result = run_prepare(
            plan,
            jobs=args.jobs,
            progress=lambda done, _total: bar.update(task, done),
            size_limits=None if args.no_size_limits else DEFAULT_LIMITS,
        )
        bar.done(task)
    if args.json:
        print_json(result_json(result))
    else:
        print_result(result)
    return 0 if result.ok else 1


def _check_source(source: str) -> None:
    """A source that is neither an existing path nor shaped like a Hub id (`owner/name`) is a mistake in
    the command (exit status 2), found before anything is planned."""
    import re

    from ..indexing import TargetError

    if os.path.exists(source) or re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return
    raise TargetError(
        "no such folder, and not a Hugging Face dataset id such as starriver030515/FUSION-Pretrain-10M; "
        "check the path",
        path=source,
    )


def _in_place_target(marker: Marker) -> str:
    from ..prepare import placed_at

    where = placed_at(marker.prefix, marker.entries)
    return where + " (image store)" if marker.mode == "shards" else where


def unit_action(plan: Plan, unit: ImageUnit) -> str:
    """What a run does with a pending unit: "link" (an unpacked folder), "extract", or with
    `--images shards` "index" (read in place) or "convert" (into a plain tar shard, then index)."""
    from ..archives import Archive
    from ..prepare_shards import how_readable

    if not isinstance(unit, Archive):
        return "link"
    return "extract" if plan.images == "extract" else how_readable(unit)


def plan_json(plan: Plan, previews: dict[str, Preview]) -> dict[str, Any]:
    """`prepare --dry-run --json`: what would be done, per annotation file and per archive or folder."""

    units = []
    for u in plan.units:
        entry: dict[str, Any] = {"source": u.unit.key, "kind": u.unit.kind, "bytes": u.stamp.size}
        if u.marker is not None:
            entry |= {"action": "in place", "target": _in_place_target(u.marker)}
        elif (pv := previews[u.unit.key]).placement is None:
            entry |= {"action": "refuse", "error": pv.error}
        else:
            action = unit_action(plan, u.unit)
            entry |= {"action": action, "target": pv.target, "placement": pv.placement.describe()}
        units.append(entry)
    return {
        "source": str(plan.source),
        "train": str(plan.train),
        "yaml": str(plan.yaml_path),
        "yaml_unchanged": plan.yaml_unchanged,
        "annotations": [
            {"action": j.action, "source": j.key, "target": str(j.target), "bytes": j.source.stat().st_size}
            for j in plan.jsons
        ],
        "units": units,
    }


def result_json(result: PrepareResult) -> dict[str, Any]:
    """`prepare --json`: what was done, and the check's report."""
    plan = result.plan
    return {
        "source": str(plan.source),
        "train": str(plan.train),
        "yaml": str(plan.yaml_path),
        "yaml_written": result.yaml_written,
        "ok": result.ok,
        "seconds": round(result.seconds, 3),
        "annotations": [
            {
                "source": j.item.key,
                "target": str(j.item.target),
                "action": j.action,
                "records": j.records,
                "bytes": j.bytes,
                "seconds": round(j.seconds, 3),
                "error": j.error,
            }
            for j in result.jsons
        ],
        "units": [
            {
                "source": u.item.unit.key,
                "kind": u.item.unit.kind,
                "status": u.status,
                "target": u.target,
                "files": u.files,
                "bytes": u.bytes,
                "referenced": u.referenced,
                "seconds": round(u.seconds, 3),
                "error": u.error,
            }
            for u in result.units
        ],
        "duplicates": [
            {"path": path, "read_from": kept, "ignored": ignored} for path, kept, ignored in result.duplicates
        ],
        "check": result.check.to_json() if result.check is not None else None,
        "check_error": result.check_error,
    }


def print_plan(plan: Plan, previews: dict[str, Preview]) -> None:
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(title=f"fusion-fast prepare --dry-run: {plan.source} -> {plan.train}", title_justify="left")
    for col in ("action", "from", "to", "detail"):
        table.add_column(col)
    for j in plan.jsons:
        table.add_row(
            j.action, j.key, os.path.relpath(j.target, plan.train), human_bytes(j.source.stat().st_size)
        )
    for u in plan.units:
        unit = u.unit
        what = f"{unit.kind}, {human_bytes(u.stamp.size)}"
        if u.marker is not None:
            where = _in_place_target(u.marker)
            table.add_row("in place", unit.key, where, f"{what}, {count(u.marker.files, 'file')}")
            continue
        pv = previews[unit.key]
        if pv.placement is None:
            table.add_row(Text("refuse", style="red"), unit.key, "", pv.error or "")
            continue
        listed = (
            count(pv.listed, "file") if pv.complete else f"decided from the first {count(pv.listed, 'file')}"
        )
        verb = unit_action(plan, unit)
        table.add_row(verb, unit.key, pv.target, f"{what}, {listed}; {pv.placement.describe()}")
    out.print(table)
    yaml_action = "unchanged" if plan.yaml_unchanged else "write"
    out.print(f"stage YAML: {yaml_action} {plan.yaml_path} ({count(len(plan.jsons), 'dataset')})")
    out.print("dry run: nothing was written")


def print_result(result: PrepareResult) -> None:
    from rich.table import Table
    from rich.text import Text

    from .check import render

    out = console()
    plan = result.plan
    table = Table(title=f"fusion-fast prepare: {plan.source} -> {plan.train}", title_justify="left")
    for col in ("source", "kind", "placed at", "files", "records", "referenced", "bytes", "time", "status"):
        table.add_column(
            col, justify="right" if col in ("files", "records", "referenced", "bytes", "time") else "left"
        )
    for j in result.jsons:
        status = Text(j.error, style="red") if j.error else j.action
        table.add_row(
            j.item.key, "annotations", os.path.relpath(j.item.target, plan.train), "1",
            f"{j.records:,}", "", human_bytes(j.bytes), f"{j.seconds:.2f} s", status,
        )  # fmt: skip
    for u in result.units:
        ok = u.error is None
        table.add_row(
            u.item.unit.key,
            u.item.unit.kind,
            u.target,
            f"{u.files:,}" if ok else "",
            "",
            f"{u.referenced:,}" if u.referenced is not None else "",
            human_bytes(u.bytes) if ok else "",
            f"{u.seconds:.2f} s" if u.status != "in place" else "",
            u.status if ok else Text(u.error or "", style="red"),
        )
    out.print(table)
    out.print(f"stage YAML: {'wrote' if result.yaml_written else 'unchanged'} {plan.yaml_path}")
    if result.duplicates:
        shown = "; ".join(
            f"{path} is read from {kept}, not {ignored}" for path, kept, ignored in result.duplicates[:5]
        )
        more = f" (and {len(result.duplicates) - 5:,} more)" if len(result.duplicates) > 5 else ""
        out.print(
            f"image store: {count(len(result.duplicates), 'image path')} held by more than one archive, "
            f"each read from the archive whose path sorts first: {shown}{more}"
        )
    if any(u.target.endswith("(image store)") for u in result.units):
        out.print(
            "images are read through the image store (train/images/.fusion-fast/images.ffimg): "
            "FusionDataset, fusion-fast check and fusion_fast.images find them; tools that open image "
            "files by path need --images extract"
        )
    if result.check is not None:
        render(result.check, out)
    else:
        out.print(Text(f"check did not run: {result.check_error}", style="red"))
    failed = sum(1 for j in result.jsons if j.error) + sum(1 for u in result.units if u.error)
    if result.ok:
        out.print(
            Text.assemble(("ready", "green"), f" in {result.seconds:.1f} s: train with {plan.yaml_path}")
        )
    else:
        why = [f"{failed} source(s) failed"] if failed else []
        if result.check is not None and not result.check.clean:
            why.append(f"check found {count(len(result.check.problems), 'problem')}")
        out.print(Text.assemble(("not ready", "red"), f": {'; '.join(why) or result.check_error}"))

"""`fusion-fast demo`: write the built-in sample playground, index it and show what was done."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="write a small FUSION-like playground, index it and show it")
    p.add_argument(
        "dir", nargs="?", default="fusion-fast-demo", help="where to write it (default: %(default)s)"
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the generated records (default: 0)")
    p.add_argument("--json", action="store_true", help="print what was indexed as JSON instead of a table")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import STAGE_YAML, write_playground
    from ..indexing import index_file
    from .output import console, count, human_bytes, note, print_json
    from .output import table as new_table

    out = console()
    pg = write_playground(args.dir, seed=args.seed)
    files, images = count(len(pg.jsons), "annotation file"), count(pg.images, "image")
    note(f"wrote {files} and {images} under {pg.playground.train}")
    table = new_table("indexed")
    rows = []
    for col in ("file", "records", "size", "time", "with image", "video", "mean words"):
        table.add_column(col, justify="left" if col == "file" else "right")
    total = 0
    for path in pg.jsons:
        idx, report = index_file(path, rebuild="always")
        total += len(idx)
        c = idx.columns
        rows.append({"path": str(path), "records": len(idx), "bytes": report.size, "seconds": report.seconds})
        table.add_row(
            path.name,
            f"{len(idx):,}",
            human_bytes(report.size),
            f"{report.seconds * 1000:.1f} ms",
            f"{int(idx.has_image.sum()):,}",
            f"{int(((c['flags'] & 2) != 0).sum()):,}",
            f"{float(c['words'].mean()):.1f}",
        )
    if args.json:
        print_json({"root": str(pg.root), "yaml": str(pg.yaml), "files": rows})
        return 0
    out.print(table)
    first = pg.jsons[0]
    from ..index import open as open_index

    idx = open_index(first)
    out.print(f"record 0 of {first.name}: {idx[0]}")
    out.print(f"lengths[:8] = {idx.lengths[:8].tolist()}")
    out.print(f"stage YAML: {pg.yaml}  ({count(Path(pg.yaml).read_text().count('json_path'), 'dataset')})")
    # The README's quickstart runs in the demo folder, laid out like FUSION's repository.
    out.print(f"next: cd {pg.base} && fusion-fast mix {STAGE_YAML}  (the README's quickstart)")
    return 0

"""FUSION's `static_hd` image preprocessing versus `fusion_fast.vision.FusionImageProcessor`, per core.

    python -m fusion_fast.benchmarks.vision [--quick] [--out FILE.json] [--data-dir DIR]

Photo-like JPEGs are generated with Pillow at 640x480 and 1024x768 (about 100 and 260 KB; quality 90)
and each contender turns every one of them into FUSION's `(5, 3, 384, 384)` tensor:

- FUSION: `Image.open(path).convert("RGB")`, `split_image` (resize to 768x768, four patches, the
  original resized to 384x384) and SigLIP's processor on each of the five views (Pillow resize, float64
  rescale, float32 normalise), as FUSION's code does it (transformers' array steps re-implemented in
  numpy, so transformers is not needed);
- `FusionImageProcessor(exact=True)`: the same tensor to float precision;
- `FusionImageProcessor()`: the default, within the documented tolerance.

One thread (`torch.set_num_threads(1)`), contenders alternating in rotating order for every round;
images per CPU-second of this process (= images/s per core) are reported as median and range over the
rounds, with wall-clock rates beside them. Then a DataLoader with 2 workers runs end to end over a
`FusionDataset` of those images: FUSION's path as a `transform` versus `image_processor=`.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..vision import FusionImageProcessor
from .common import machine, machine_markdown, publish, spread, table

SIZES = ((640, 480), (1024, 768))
CROP = 384


def photo_like(width: int, height: int, seed: int) -> bytes:
    """A JPEG with gradients and blurred blocky texture, sized like a photo of its resolution."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    blocks = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 3))
    noise = np.kron(blocks, np.ones((4, 4, 1)))[:height, :width] * 40
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def fusion_static_hd(path: str) -> torch.Tensor:
    """FUSION's `read_image` + `split_image` + SigLipImageProcessor.preprocess, step by step."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    resized = image.resize((CROP * 2, CROP * 2))
    patches = [resized.crop((j, i, j + CROP, i + CROP)) for i in range(0, 2 * CROP, CROP) for j in (0, CROP)]
    views = patches + [image.resize((CROP, CROP))]
    out = []
    mean = np.array((0.5, 0.5, 0.5), dtype=np.float32)
    std = np.array((0.5, 0.5, 0.5), dtype=np.float32)
    for view in views:
        arr = np.asarray(view.convert("RGB"))
        arr = np.array(Image.fromarray(arr).resize((CROP, CROP), resample=Image.Resampling.BICUBIC))
        arr = arr.transpose(2, 0, 1)
        arr = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        out.append(torch.from_numpy(((arr.T - mean) / std).T))
    return torch.stack(out, dim=0)


def fusion_transform(item: dict[str, Any]) -> dict[str, Any]:
    item["_pixel_values"] = fusion_static_hd(item["image"])
    return item


def per_core(contenders: dict[str, Callable[[str], Any]], paths: list[str], rounds: int) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for name in names:  # warm-up: imports, first-touch, lookup tables
        contenders[name](paths[0])
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = contenders[name]
            c, w = time.process_time(), time.perf_counter()
            for p in paths:
                fn(p)
            cpu[name].append(len(paths) / (time.process_time() - c))
            wall[name].append(len(paths) / (time.perf_counter() - w))
    return {k: {"per_cpu_second": spread(cpu[k]), "per_wall_second": spread(wall[k])} for k in names}


def dataloader_rate(folder: Path, paths: list[str], rounds: int, transform: bool) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from ..torch import FusionDataset, collate

    records = [
        {"id": i, "image": p, "conversations": [{"from": "human", "value": "<image>\nq"}]}
        for i, p in enumerate(paths)
    ]
    data = folder / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    kw: dict[str, Any] = (
        {"transform": fusion_transform} if transform else {"image_processor": FusionImageProcessor()}
    )
    ds = FusionDataset(data, **kw)
    rates = []
    for _ in range(rounds):
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, persistent_workers=False)
        t = time.perf_counter()
        n = sum(len(b["id"]) for b in loader)
        rates.append(n / (time.perf_counter() - t))
    return spread(rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few images and rounds: proves it runs")
    p.add_argument("--out", default=None, help="write the raw figures here as JSON")
    p.add_argument("--data-dir", default=None, help="accepted for the suite; the images go to a temp folder")
    p.add_argument("--size", default=None, help="accepted for the suite; the image set has a fixed size")
    p.add_argument("--images", type=int, default=None, help="images of each resolution (default 16; quick 4)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per contender (default 7; quick 3)")
    p.add_argument("--no-dataloader", action="store_true", help="skip the 2-worker DataLoader comparison")
    args = p.parse_args(argv)
    per_size = args.images or (4 if args.quick else 16)
    rounds = args.rounds or (3 if args.quick else 7)
    torch.set_num_threads(1)
    contenders: dict[str, Callable[[str], Any]] = {
        "FUSION (Pillow + SigLIP processor)": fusion_static_hd,
        "FusionImageProcessor(exact=True)": FusionImageProcessor("static_hd", exact=True),
        "FusionImageProcessor() (default)": FusionImageProcessor("static_hd"),
    }
    results: dict[str, Any] = {"machine": machine(), "rounds": rounds, "images_per_size": per_size}
    with tempfile.TemporaryDirectory(prefix="fusion-fast-vision-") as tmp:
        folder = Path(tmp)
        paths: list[str] = []
        kb = {}
        for w, h in SIZES:
            sizes = []
            for k in range(per_size):
                data = photo_like(w, h, seed=k)
                path = folder / f"{w}x{h}-{k}.jpg"
                path.write_bytes(data)
                paths.append(str(path))
                sizes.append(len(data) / 1000)
            kb[f"{w}x{h}"] = round(float(np.mean(sizes)), 1)
        results["jpeg_kb"] = kb
        rates = per_core(contenders, paths, rounds)
        results["static_hd_per_core"] = rates
        base = rates["FUSION (Pillow + SigLIP processor)"]["per_cpu_second"]["median"]
        rows = []
        for name, r in rates.items():
            c, w = r["per_cpu_second"], r["per_wall_second"]
            rows.append(
                [
                    name,
                    f"{c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f})",
                    f"{c['median'] / base:.2f}x",
                    f"{w['median']:.1f} ({w['min']:.1f}–{w['max']:.1f})",
                ]
            )
        md = [
            "## Image preprocessing: FUSION's static_hd vs FusionImageProcessor",
            "",
            machine_markdown(results["machine"]),
            f"{len(paths)} JPEGs ({', '.join(f'{k}: {v} KB' for k, v in kb.items())}), one thread, {rounds} "
            "alternating rounds; median (min–max).",
            "",
            table(["contender", "images / CPU-second (per core)", "vs FUSION", "images / s (wall)"], rows),
        ]
        if not args.no_dataloader:
            dl_rounds = 2 if args.quick else 3
            dl = {
                "FUSION's path as transform": dataloader_rate(folder, paths, dl_rounds, transform=True),
                "image_processor=FusionImageProcessor()": dataloader_rate(folder, paths, dl_rounds, False),
            }
            results["dataloader_2_workers"] = dl
            md += [
                "",
                "DataLoader, 2 workers, batch 4, end to end (samples/s, median (min–max)):",
                "",
                table(
                    ["items", "samples / s"],
                    [[k, f"{v['median']:.1f} ({v['min']:.1f}–{v['max']:.1f})"] for k, v in dl.items()],
                ),
            ]
    publish("\n".join(md), results, args.out)


if __name__ == "__main__":
    main()

"""Seeded generator of LLaVA-style annotation files (JSON arrays and JSON Lines) of any size.

Shapes follow real FUSION / LLaVA data: single image (string), multi-image (list), text-only, video,
multi-turn conversations, unicode (raw and escaped), escapes, `<image>` tokens before or after text.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

WORDS = (
    "the a of to and in is it that on with as for this image shows man woman dog cat street car red "
    "blue green large small two three people standing sitting near table window building sky tree water "
    "describe what where how many color photo picture detail background foreground left right"
).split()
UNICODE = ["café", "naïve", "日本語", "中文说明", "😀", "—", "“quoted”", "Straße", "\u00a0nbsp", "x\u3000y"]
TRICKY = ['he said "hi"', "back\\slash", "a, b] {c}", "tab\there", "[1, 2]", '{"k": "v"}', "\\\\\\"]
SOURCES = ["PixelProse", "LLaVA-Pretrain", "ShareGPT4V", "ALLaVA", "SynthText"]


def _sentence(rng: random.Random, n: int) -> str:
    parts = []
    for _ in range(n):
        r = rng.random()
        parts.append(
            rng.choice(UNICODE) if r < 0.03 else rng.choice(TRICKY) if r < 0.05 else rng.choice(WORDS)
        )
    return " ".join(parts)


def make_record(rng: random.Random, i: int, mean_words: int = 45, image_ext: str = "jpg") -> dict[str, Any]:
    """One LLaVA-style record. About 60% single image, 10% multi-image, 25% text-only, 5% video."""
    kind = rng.random()
    source = rng.choice(SOURCES)
    rec: dict[str, Any] = {"id": f"{source}-{i:09d}"}
    n_images = 0
    token = "<image>"
    if kind < 0.60:
        rec["image"] = f"{source}/{i // 1000:05d}/{i:09d}.{image_ext}"
        n_images = 1
    elif kind < 0.70:
        n_images = rng.randint(2, 4)
        rec["image"] = [f"{source}/{i // 1000:05d}/{i:09d}_{k}.{image_ext}" for k in range(n_images)]
    elif kind < 0.75:
        rec["video"] = f"videos/{source}/{i:09d}.mp4"
        token, n_images = "<video>", 1
    turns = 2 if rng.random() < 0.7 else 2 * rng.randint(2, 5)
    conversations = []
    for t in range(turns):
        human = t % 2 == 0
        n = max(1, int(rng.expovariate(1 / (mean_words / (4 if human else 1)))))
        text = _sentence(rng, n)
        if t == 0 and n_images:
            tokens = "\n".join([token] * n_images)
            text = f"{tokens}\n{text}" if rng.random() < 0.5 else f"{text}\n{tokens}"
        conversations.append({"from": "human" if human else "gpt", "value": text})
    rec["conversations"] = conversations
    return rec


def iter_records(seed: int = 0, mean_words: int = 45) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    i = 0
    while True:
        yield make_record(rng, i, mean_words)
        i += 1


def parse_size(text: str) -> int:
    """Bytes from a size such as `64MiB`, `1.5GiB`, `512k` or `1000` (binary units: k = 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b").strip()
    try:
        value = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; expected e.g. 64MiB, 1.5GiB, 512k or 1000") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size; expected a non-negative number of bytes")
    return int(value)


def write_file(
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    records: int | None = None,
    seed: int = 0,
    indent: int | None = 4,
    ensure_ascii: bool = False,
) -> int:
    """Write a `.json` array (or `.jsonl` when the name ends so) of at most `size` bytes (and within one
    record of it), or of exactly `records` records. The same arguments always give the same bytes.
    Returns the number of records written."""
    if (size is None) == (records is None):
        raise ValueError("give exactly one of size= and records=")
    path = os.fspath(path)
    lines = path.endswith(".jsonl")
    opening, closing = ("", "") if lines else ("[", "\n]\n" if indent is not None else "]")
    written = len(opening) + len(closing)
    count = 0
    # Large files reuse a pool of distinct records with fresh ids, so generation stays fast.
    pool_rng = random.Random(seed)
    pool = [make_record(pool_rng, k) for k in range(4096)]
    with open(path, "wb") as f:
        f.write(opening.encode())
        while records is None or count < records:
            rec = dict(pool[count % len(pool)]) if count >= len(pool) else pool[count]
            if count >= len(pool):
                rec["id"] = f"{rec['id'].rsplit('-', 1)[0]}-{count:09d}"
            if lines:
                text = json.dumps(rec, ensure_ascii=ensure_ascii) + "\n"
            else:
                body = json.dumps(rec, indent=indent, ensure_ascii=ensure_ascii)
                if indent is not None:
                    body = "\n".join(" " * indent + line for line in body.split("\n"))
                text = ("," if count else "") + ("\n" if indent is not None else "") + body
            data = text.encode("utf-8")
            if size is not None and written + len(data) > size:
                break
            f.write(data)
            written += len(data)
            count += 1
        f.write(closing.encode())
    return count


def tiny_png(width: int = 4, height: int = 4, rgb: tuple[int, int, int] = (200, 60, 30)) -> bytes:
    """A valid RGB PNG, written without Pillow."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )

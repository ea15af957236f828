"""FusionImageProcessor against FUSION's own preprocessing, re-implemented here from FUSION's code.

The oracle follows `fusion/train/train.py` (`read_image`, `_sample_item`'s `expand2square`),
`fusion/mm_utils.py` (`split_image`, `divide_to_patches`) and SigLIP's processor
(`fusion/model/multimodal_encoder/siglip_encoder.py`, with transformers' `resize` / `rescale` /
`normalize`): Pillow and numpy only, nothing from `fusion_fast.vision`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
ImageFilter = pytest.importorskip("PIL.ImageFilter")

from fusion_fast.vision import DEFAULT_TOLERANCE, FusionImageProcessor  # noqa: E402

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CROP = 384


# -- the oracle: FUSION's code path --------------------------------------------------------------------
def siglip_preprocess(image: Image.Image) -> np.ndarray:
    """SigLipImageProcessor.preprocess(image)['pixel_values'][0] with FUSION's default settings."""
    image = image.convert("RGB") if image.mode != "RGB" else image  # convert_to_rgb
    arr = np.asarray(image)  # to_numpy_array: (h, w, 3) uint8
    # transformers.image_transforms.resize: to PIL (uint8, no rescale), resize, back, channels first
    arr = np.array(Image.fromarray(arr).resize((CROP, CROP), resample=Image.BICUBIC, reducing_gap=None))
    arr = arr.transpose(2, 0, 1)
    arr = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    mean = np.array(MEAN, dtype=arr.dtype)  # normalize, channels first
    std = np.array(STD, dtype=arr.dtype)
    return ((arr.T - mean) / std).T


def fusion_reference(path: Path, mode: str) -> np.ndarray:
    image = Image.open(path).convert("RGB")  # LazySupervisedDataset.read_image
    if mode == "pad":
        background = tuple(int(x * 255) for x in MEAN)
        width, height = image.size
        if width != height:
            side = max(width, height)
            square = Image.new(image.mode, (side, side), background)
            square.paste(image, ((side - width) // 2, (side - height) // 2))
            image = square
        return siglip_preprocess(image)
    if mode == "static_hd":  # split_image
        resized = image.resize((CROP * 2, CROP * 2))
        patches = []
        width, height = resized.size
        for i in range(0, height, CROP):  # divide_to_patches
            for j in range(0, width, CROP):
                patches.append(resized.crop((j, i, j + CROP, i + CROP)))
        views = patches + [image.resize((CROP, CROP))]
        return np.stack([siglip_preprocess(v) for v in views])
    return siglip_preprocess(image)


# -- test images ----------------------------------------------------------------------------------------
def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: gradients plus blurred blocky noise, so resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noise = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 3))
    noise = np.kron(noise, np.ones((4, 4, 1)))[:height, :width] * 40
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1))


def text_page(width: int, height: int, size: int) -> Image.Image:
    """A scanned-document-like page: black lines of text at `size` px (Pillow's default font) on white."""
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    line = "The quick brown fox jumps over the lazy dog, 0123456789; " * (width // (12 * size) + 1)
    for y in range(size, height - 2 * size, size * 13 // 10):
        draw.text((size, y), line, fill="black", font=font)
    return img


def stripes(width: int, height: int, period: int, vertical: bool = True) -> Image.Image:
    """Black and white stripes `period` px wide: the most aliasing-prone content a resize can meet."""
    on = (np.arange(width if vertical else height) // period) % 2 == 0
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    if vertical:
        arr[:, on] = 255
    else:
        arr[on] = 255
    return Image.fromarray(arr)


def checkerboard(width: int, height: int, period: int) -> Image.Image:
    rows = (np.arange(height) // period) % 2
    cols = (np.arange(width) // period) % 2
    arr = ((rows[:, None] ^ cols[None, :]) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def high_frequency_images(d: Path) -> dict[str, Path]:
    """Text pages, stripes and checkerboards as JPEGs (quality 90-95) up to ~3500 px: the content where
    decoding at a reduced scale differs most from FUSION's full decode and Pillow resize."""
    return {
        "text-3508x2480-12px": save(text_page(3508, 2480, 12), d / "text-a.jpg", "JPEG", quality=92),
        "text-2480x3508-16px": save(text_page(2480, 3508, 16), d / "text-b.jpg", "JPEG", quality=95),
        "text-1700x2200-10px": save(text_page(1700, 2200, 10), d / "text-c.jpg", "JPEG", quality=90),
        "stripes-3072-3px": save(stripes(3072, 3072, 3), d / "stripes-a.jpg", "JPEG", quality=92),
        "stripes-3072-5px-rows": save(stripes(3072, 3072, 5, False), d / "stripes-b.jpg", "JPEG", quality=90),
        "stripes-2400x3400-6px": save(stripes(2400, 3400, 6), d / "stripes-c.jpg", "JPEG", quality=95),
        "checkerboard-3072-4px": save(checkerboard(3072, 3072, 4), d / "checker-a.jpg", "JPEG", quality=92),
        "checkerboard-2000x1500-3px": save(
            checkerboard(2000, 1500, 3), d / "checker-b.jpg", "JPEG", quality=95
        ),
    }


HIGH_FREQUENCY = [
    "text-3508x2480-12px",
    "text-2480x3508-16px",
    "text-1700x2200-10px",
    "stripes-3072-3px",
    "stripes-3072-5px-rows",
    "stripes-2400x3400-6px",
    "checkerboard-3072-4px",
    "checkerboard-2000x1500-3px",
]


def save(img: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    img.save(path, fmt, **kw)
    return path


SIZES = [(640, 480), (1024, 768), (480, 640), (1600, 1200), (2400, 800), (384, 384), (800, 1800)]
MODES = ["static_hd", "pad", "square"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    out: dict[str, Path] = {}
    for k, (w, h) in enumerate(SIZES):
        out[f"jpeg-{w}x{h}"] = save(textured(w, h, k), d / f"{w}x{h}.jpg", "JPEG", quality=90)
    out["png"] = save(textured(700, 500, 10), d / "a.png", "PNG")
    out["png-rgba"] = save(textured(500, 700, 11).convert("RGBA"), d / "rgba.png", "PNG")
    out["gray-jpeg"] = save(textured(900, 600, 12).convert("L"), d / "gray.jpg", "JPEG", quality=90)
    out["cmyk-jpeg"] = save(textured(800, 600, 13).convert("CMYK"), d / "cmyk.jpg", "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display; FUSION ignores it
    out["exif-rotated"] = save(textured(1000, 600, 14), d / "rot.jpg", "JPEG", quality=90, exif=exif)
    out["tiny-jpeg"] = save(textured(100, 60, 15), d / "tiny.jpg", "JPEG", quality=90)
    out["tiny-png"] = save(textured(37, 53, 16), d / "tiny.png", "PNG")
    out["big-jpeg"] = save(textured(3300, 2500, 17), d / "big.jpg", "JPEG", quality=85)
    out.update(high_frequency_images(d))
    palette = textured(600, 400, 18).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    out["png-palette-transparent"] = save(palette, d / "palette.png", "PNG", transparency=0)
    deep = (np.asarray(textured(500, 300, 19).convert("L"), dtype=np.uint16) * 257) >> 7  # 0..511
    out["png-16bit"] = save(Image.fromarray(deep.astype(np.uint16)), d / "deep.png", "PNG")
    out["webp"] = save(textured(900, 700, 20), d / "a.webp", "WEBP", quality=90)
    return out


ALL = [f"jpeg-{w}x{h}" for w, h in SIZES] + [
    "png",
    "png-rgba",
    "gray-jpeg",
    "cmyk-jpeg",
    "exif-rotated",
    "tiny-jpeg",
    "tiny-png",
    "big-jpeg",
    *HIGH_FREQUENCY,
    "png-palette-transparent",
    "png-16bit",
    "webp",
]
NOT_JPEG = ["png", "png-rgba", "tiny-png", "png-palette-transparent", "png-16bit", "webp"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_exact_equals_fusion(images: dict[str, Path], name: str, mode: str) -> None:
    expected = fusion_reference(images[name], mode)
    got = FusionImageProcessor(mode, exact=True)(images[name])
    assert got.dtype == torch.float32
    assert (
        tuple(got.shape) == expected.shape == ((5, 3, CROP, CROP) if mode == "static_hd" else (3, CROP, CROP))
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_default_within_tolerance(images: dict[str, Path], name: str, mode: str) -> None:
    expected = fusion_reference(images[name], mode)
    got = FusionImageProcessor(mode)(images[name]).numpy()
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    assert diff.mean() <= DEFAULT_TOLERANCE, f"mean absolute difference {diff.mean():.4f}"
    if mode == "static_hd":  # every view, not just the average over five, stays within the bound
        assert diff.reshape(5, -1).mean(axis=1).max() <= DEFAULT_TOLERANCE


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NOT_JPEG)
def test_images_that_are_not_jpeg_take_the_exact_path(images: dict[str, Path], name: str, mode: str) -> None:
    """The default processor equals FUSION to float precision on anything that is not a JPEG, given as a
    path, as bytes or as the opened PIL image."""
    path = images[name]
    expected = fusion_reference(path, mode)
    p = FusionImageProcessor(mode)
    for source in (path, path.read_bytes(), Image.open(path)):
        np.testing.assert_allclose(p(source).numpy(), expected, rtol=0, atol=1e-6)


def test_a_path_into_the_image_store_is_read_from_it(tmp_path: Path) -> None:
    """A path naming a member of its folder's image store (a playground prepared with `--images shards`)
    is read from the store, as `fusion_fast.images.read_path` reads it; a path in neither is not found."""
    import tarfile

    from fusion_fast.images import ImageStore, read_path

    from .test_images import _tar

    members = {}
    for name, fmt in (("3.jpg", "JPEG"), ("4.png", "PNG")):
        buf = io.BytesIO()
        textured(1200, 900, 21).save(buf, fmt)
        members[name] = buf.getvalue()
    archive = _tar(tmp_path / "src.tar", {f"top/{k}": v for k, v in members.items()}, tarfile.GNU_FORMAT)
    images = tmp_path / "images"
    (images / ".fusion-fast").mkdir(parents=True)
    ImageStore.build([archive], images / ".fusion-fast" / "images.ffimg", placements=[(1, "Src")])
    for name, data in members.items():
        path = images / "Src" / name
        assert not path.exists() and read_path(path) == data
        for mode in MODES:
            for exact in (True, False):
                p = FusionImageProcessor(mode, exact=exact)
                assert torch.equal(p(path), p(data)), (name, mode, exact)
                assert torch.equal(p(str(path)), p(data)), (name, mode, exact)
    with pytest.raises(FileNotFoundError):
        FusionImageProcessor()(images / "Src" / "absent.jpg")


def test_exif_orientation_is_not_applied(images: dict[str, Path]) -> None:
    """A transposed reading would differ by far more than the tolerance: the test can tell."""
    from PIL import ImageOps

    path = images["exif-rotated"]
    got = FusionImageProcessor("square")(path).numpy()
    rotated = ImageOps.exif_transpose(Image.open(path).convert("RGB"))
    buf = io.BytesIO()
    rotated.save(buf, "PNG")
    turned = fusion_reference(Path(_write(buf.getvalue(), path.with_suffix(".turned.png"))), "square")
    assert np.abs(got - turned).mean() > 10 * DEFAULT_TOLERANCE
    assert np.abs(got - fusion_reference(path, "square")).mean() <= DEFAULT_TOLERANCE


def _write(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("exact", [True, False])
def test_path_bytes_and_pil_give_the_same_tensor(images: dict[str, Path], exact: bool) -> None:
    path = images["png"]  # not a JPEG: every source takes the same full-size decode
    p = FusionImageProcessor("static_hd", exact=exact)
    from_path = p(path)
    assert torch.equal(from_path, p(str(path)))
    assert torch.equal(from_path, p(path.read_bytes()))
    assert torch.equal(from_path, p(Image.open(path)))


def test_jpeg_bytes_take_the_fast_decode(images: dict[str, Path]) -> None:
    path = images["big-jpeg"]
    p = FusionImageProcessor("square")
    assert torch.equal(p(path), p(path.read_bytes()))


def test_mean_and_std_are_used(images: dict[str, Path]) -> None:
    path = images["jpeg-640x480"]
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for exact in (True, False):
        got = FusionImageProcessor("square", mean=mean, std=std, exact=exact)(path)
        base = FusionImageProcessor("square", exact=True)(path)  # (v - 0.5) / 0.5
        unit = base * 0.5 + 0.5
        expected = (unit - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert (got - expected).abs().mean() <= (1e-5 if exact else DEFAULT_TOLERANCE / 0.26)


def test_pad_background_is_the_mean(tmp_path: Path) -> None:
    """A wide black image padded: the bands above and below take the processor mean's colour."""
    path = save(Image.new("RGB", (800, 200)), tmp_path / "black.png", "PNG")
    mean = (0.2, 0.4, 0.6)
    got = FusionImageProcessor("pad", mean=mean, exact=True)(path)
    for ch, m in enumerate(mean):
        expected = (np.float32(int(m * 255) / 255) - np.float32(m)) / np.float32(0.5)
        assert got[ch, 0, 0].item() == pytest.approx(float(expected), abs=1e-6)
        assert got[ch, CROP // 2, CROP // 2].item() == pytest.approx((0 - m) / 0.5, abs=1e-6)


def test_processor_pickles(images: dict[str, Path]) -> None:
    p = FusionImageProcessor("pad", crop_size=384)
    q = pickle.loads(pickle.dumps(p))
    assert torch.equal(p(images["png"]), q(images["png"]))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        FusionImageProcessor("anyres")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per RGB channel"):
        FusionImageProcessor(mean=(0.5,))


def test_undecodable_input_raises(tmp_path: Path) -> None:
    from PIL import UnidentifiedImageError

    with pytest.raises(UnidentifiedImageError):
        FusionImageProcessor()(b"not an image")
    with pytest.raises(FileNotFoundError):
        FusionImageProcessor()(tmp_path / "absent.jpg")


# -- FusionDataset(image_processor=...) -------------------------------------------------------------------
def _dataset_files(tmp_path: Path) -> tuple[Path, Path]:
    import json

    folder = tmp_path / "imgs"
    folder.mkdir()
    save(textured(300, 200, 1), folder / "0.jpg", "JPEG", quality=90)
    save(textured(200, 300, 2), folder / "1.png", "PNG")
    (folder / "3.jpg").write_bytes(b"not a jpeg")
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    records = [
        {"id": "a", "image": "0.jpg", "conversations": turns},
        {"id": "b", "image": "1.png", "conversations": turns},
        {"id": "c", "image": "2.jpg", "conversations": turns},  # missing
        {"id": "d", "image": "3.jpg", "conversations": turns},  # undecodable
        {"id": "e", "image": ["0.jpg", "1.png"], "conversations": turns},
        {"id": "f", "conversations": turns},  # text only
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, folder


def test_dataset_item_holds_the_processor_tensor(tmp_path: Path) -> None:
    from fusion_fast.torch import PIXELS_KEY, FusionDataset

    path, folder = _dataset_files(tmp_path)
    processor = FusionImageProcessor("static_hd")
    ds = FusionDataset(path, image_folder=folder, image_processor=processor)
    item = ds[0]
    assert PIXELS_KEY == "_pixel_values"
    assert torch.equal(item[PIXELS_KEY], processor(folder / "0.jpg"))
    assert "_image" not in item
    pair = ds[4][PIXELS_KEY]
    assert isinstance(pair, list) and torch.equal(pair[1], processor(folder / "1.png"))
    assert PIXELS_KEY not in ds[5]


def test_dataset_processor_errors_match_load_images(tmp_path: Path) -> None:
    from fusion_fast.errors import RecordError
    from fusion_fast.torch import FusionDataset

    path, folder = _dataset_files(tmp_path)
    for kw in ({"load_images": True}, {"image_processor": FusionImageProcessor("pad")}):
        ds = FusionDataset(path, image_folder=folder, **kw)  # type: ignore[arg-type]
        with pytest.raises(RecordError, match=r"record 2 \(id 'c'\): image not found: .*2\.jpg"):
            ds[2]
        with pytest.raises(RecordError, match=r"record 3 \(id 'd'\): cannot decode image .*3\.jpg"):
            ds[3]
        skip = FusionDataset(path, image_folder=folder, on_error="skip", **kw)  # type: ignore[arg-type]
        assert [it["id"] for it in skip.__getitems__([1, 2, 3])] == ["b", "e", "e"]
        assert skip.skip_causes == {"missing_image": 1, "unreadable_image": 1}


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_stacks_processor_tensors(tmp_path: Path, workers: int) -> None:
    from torch.utils.data import DataLoader

    from fusion_fast.torch import PIXELS_KEY, FusionDataset, collate

    path, folder = _dataset_files(tmp_path)
    processor = FusionImageProcessor("static_hd")
    ds = FusionDataset(path, image_folder=folder, image_processor=processor, on_error="skip")
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate, sampler=[0, 1, 1, 0])
    batches = list(loader)
    assert [b["id"] for b in batches] == [["a", "b"], ["b", "a"]]
    for b in batches:
        assert isinstance(b[PIXELS_KEY], torch.Tensor) and tuple(b[PIXELS_KEY].shape) == (2, 5, 3, 384, 384)
    assert torch.equal(batches[0][PIXELS_KEY][1], processor(folder / "1.png"))
    assert torch.equal(batches[1][PIXELS_KEY][1], processor(folder / "0.jpg"))


# -- device="cuda" -------------------------------------------------------------------------------------------
def test_cuda_without_a_device_degrades_to_the_cpu_path(images: dict[str, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the GPU test covers this")
    path = images["jpeg-1024x768"]
    got = FusionImageProcessor("static_hd", device="cuda")(path)
    assert got.device.type == "cpu"
    assert torch.equal(got, FusionImageProcessor("static_hd")(path))


@pytest.mark.parametrize("mode", MODES)
def test_device_steps_within_tolerance_on_cpu(
    images: dict[str, Path], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device path's resizing, padding and normalising, run on the CPU with Pillow standing in for
    nvJPEG (torchvision's `decode_jpeg` contract: a (3, h, w) uint8 RGB tensor, no EXIF rotation)."""
    import sys
    import types

    def decode_jpeg(raw: object, mode: object = None, device: object = "cpu") -> object:
        if isinstance(raw, list):  # torchvision decodes a list of images in one call
            return [decode_jpeg(r, mode, device) for r in raw]
        assert isinstance(raw, torch.Tensor) and mode == "RGB"
        img = Image.open(io.BytesIO(raw.numpy().tobytes())).convert("RGB")
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()

    fake = types.ModuleType("torchvision.io")
    fake.ImageReadMode = types.SimpleNamespace(RGB="RGB")  # type: ignore[attr-defined]
    fake.decode_jpeg = decode_jpeg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", fake)
    for name in ("jpeg-640x480", "jpeg-1024x768", "jpeg-800x1800", "gray-jpeg", "tiny-jpeg", "exif-rotated"):
        got = FusionImageProcessor(mode)._gpu(images[name].read_bytes()).numpy()
        expected = fusion_reference(images[name], mode)
        assert got.shape == expected.shape
        assert np.abs(got - expected).mean() <= DEFAULT_TOLERANCE, name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cuda_path_within_tolerance(images: dict[str, Path], mode: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("torchvision")
    p = FusionImageProcessor(mode, device="cuda")
    for name in ALL:
        got = p(images[name])
        assert got.device.type == "cuda", name
        expected = fusion_reference(images[name], mode)
        assert np.abs(got.cpu().numpy() - expected).mean() <= DEFAULT_TOLERANCE, name

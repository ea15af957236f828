"""The shipped-bytes image path: DataLoader workers ship compressed JPEGs, the device decodes them and runs
FUSION's preprocessing. The device stage is run on the CPU here, with Pillow standing in for nvJPEG
(torchvision's contract: `(3, h, w)` uint8 RGB, no EXIF rotation), and compared with FUSION's
computation (re-implemented in test_vision.py from FUSION's code) and with the CPU processor. The same
comparisons on a GPU, with nvJPEG, are the tests marked `gpu`."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from fusion_fast import vision  # noqa: E402
from fusion_fast.errors import RecordError  # noqa: E402
from fusion_fast.vision import DEFAULT_TOLERANCE, FusionImageProcessor  # noqa: E402
from fusion_fast.vision_device import (  # noqa: E402
    DECODERS,
    ShippedBatch,
    ShippedImage,
    decode_pillow,
    preprocess_decoded,
)

from .test_vision import HIGH_FREQUENCY, fusion_reference, high_frequency_images, save, textured  # noqa: E402

MODES = ["static_hd", "pad", "square"]
CROP = 384
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("device-images")
    out: dict[str, Path] = {}
    for k, (w, h) in enumerate([(640, 480), (1024, 768), (480, 640), (2400, 800), (384, 384), (800, 1800)]):
        out[f"jpeg-{w}x{h}"] = save(textured(w, h, k), d / f"{w}x{h}.jpg", "JPEG", quality=90)
    out["gray-jpeg"] = save(textured(900, 600, 12).convert("L"), d / "gray.jpg", "JPEG", quality=90)
    out["cmyk-jpeg"] = save(textured(800, 600, 13).convert("CMYK"), d / "cmyk.jpg", "JPEG", quality=90)
    out["tiny-jpeg"] = save(textured(100, 60, 15), d / "tiny.jpg", "JPEG", quality=90)
    out["one-pixel-jpeg"] = save(textured(1, 1, 16), d / "one.jpg", "JPEG", quality=90)
    out["png"] = save(textured(700, 500, 10), d / "a.png", "PNG")
    out["tiny-png"] = save(textured(37, 53, 16), d / "tiny.png", "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate on display: FUSION does not, nor does nvJPEG through torchvision
    out["exif-rotated"] = save(textured(1000, 600, 14), d / "rot.jpg", "JPEG", quality=90, exif=exif)
    out.update(high_frequency_images(d))
    return out


SOURCES = [
    "jpeg-640x480",
    "jpeg-1024x768",
    "jpeg-480x640",
    "jpeg-2400x800",
    "jpeg-384x384",
    "jpeg-800x1800",
    "gray-jpeg",
    "cmyk-jpeg",
    "tiny-jpeg",
    "one-pixel-jpeg",
    "png",
    "tiny-png",
    "exif-rotated",
    *HIGH_FREQUENCY,
]


def decoded(path: Path) -> torch.Tensor:
    """The image as a device decoder returns it: (3, h, w) uint8 RGB."""
    return decode_pillow([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], CPU)[0]


def cpu_stage(processor: FusionImageProcessor) -> FusionImageProcessor:
    """`processor` shipping compressed JPEGs, with the device stage on the CPU and Pillow decoding."""
    return processor._with_device_stage("cpu", "pillow")


# -- the geometry and normalisation stage -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SOURCES)
def test_device_stage_within_tolerance_of_fusion(images: dict[str, Path], name: str, mode: str) -> None:
    processor = FusionImageProcessor(mode)
    got = preprocess_decoded([decoded(images[name])], processor)
    assert got.dtype == torch.float32 and tuple(got.shape) == (1, *processor.shape)
    expected = fusion_reference(images[name], mode)
    diff = np.abs(got[0].numpy() - expected)
    assert diff.mean() <= DEFAULT_TOLERANCE, f"mean absolute difference {diff.mean():.4f}"
    if mode == "static_hd":  # every view, the global one included, in FUSION's order
        assert diff.reshape(5, -1).mean(axis=1).max() <= DEFAULT_TOLERANCE
    for exact in (True, False):  # and the CPU processor's paths
        cpu = FusionImageProcessor(mode, exact=exact)(images[name]).numpy()
        assert np.abs(got[0].numpy() - cpu).mean() <= DEFAULT_TOLERANCE


def test_patches_come_in_row_major_order(tmp_path: Path) -> None:
    """Four flat quadrants of different colours: patch v must hold quadrant v (row-major), the global
    view all four. A transposed or shuffled order would put the wrong colour first."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    arr = np.zeros((400, 600, 3), dtype=np.uint8)
    for v, colour in enumerate(colours):
        i, j = divmod(v, 2)
        arr[i * 200 : (i + 1) * 200, j * 300 : (j + 1) * 300] = colour
    img = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    got = preprocess_decoded([img], FusionImageProcessor("static_hd"))[0]
    for v, colour in enumerate(colours):
        centre = got[v, :, CROP // 2, CROP // 2]
        assert centre.tolist() == pytest.approx([(c / 255 - 0.5) / 0.5 for c in colour], abs=1e-6)
    top_right = got[4, :, CROP // 4, 3 * CROP // 4].tolist()  # the global view keeps the layout
    assert top_right == pytest.approx([(c / 255 - 0.5) / 0.5 for c in colours[1]], abs=1e-6)


def test_custom_mean_std_and_crop_size(images: dict[str, Path]) -> None:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for mode in MODES:
        processor = FusionImageProcessor(mode, crop_size=224, mean=mean, std=std)
        got = preprocess_decoded([decoded(images["jpeg-1024x768"])], processor)[0]
        expected = FusionImageProcessor(mode, crop_size=224, mean=mean, std=std, exact=True)(
            images["jpeg-1024x768"]
        )
        assert got.shape == expected.shape
        assert (got - expected).abs().mean() <= DEFAULT_TOLERANCE / 0.26


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_of_sizes_equals_one_by_one(images: dict[str, Path], mode: str) -> None:
    """Images of one size are resized together (more of them than one chunk holds), the others alone:
    each result is the one it gets by itself, in its place in the batch."""
    processor = FusionImageProcessor(mode)
    a, b = decoded(images["jpeg-640x480"]), decoded(images["jpeg-800x1800"])
    same_size = [a, a.flip(-1), a.flip(-2), a.roll(50, -1)]
    tiny = decoded(images["tiny-png"])
    batch = [b, *same_size, tiny, *same_size[::-1], *same_size, *same_size, a, b.flip(-1)]  # 17 of a's size
    together = preprocess_decoded(batch, processor)
    for k, img in enumerate(batch):
        assert torch.equal(together[k], preprocess_decoded([img], processor)[0]), k
    assert not torch.equal(together[1], together[2])


def test_device_stage_rejects_what_is_not_a_decoded_rgb_image() -> None:
    with pytest.raises(ValueError, match=r"image 0: expected a \(3, h, w\) uint8 RGB tensor"):
        preprocess_decoded([torch.zeros(1, 8, 8, dtype=torch.uint8)], FusionImageProcessor())
    with pytest.raises(ValueError, match="uint8"):
        preprocess_decoded([torch.zeros(3, 8, 8)], FusionImageProcessor())


# -- what a worker ships ----------------------------------------------------------------------------------


def test_ship_hands_over_complete_rgb_and_gray_jpegs(images: dict[str, Path]) -> None:
    processor = cpu_stage(FusionImageProcessor("static_hd"))
    for name in ("jpeg-640x480", "gray-jpeg", "tiny-jpeg", "exif-rotated"):
        shipped = processor.ship(images[name])
        assert isinstance(shipped, ShippedImage), name
        assert shipped.data == images[name].read_bytes()
        assert isinstance(processor.ship(images[name].read_bytes()), ShippedImage)


@pytest.mark.parametrize("name", ["cmyk-jpeg", "png", "tiny-png"])
def test_ship_processes_the_rest_on_the_cpu(images: dict[str, Path], name: str) -> None:
    processor = cpu_stage(FusionImageProcessor("static_hd"))
    got = processor.ship(images[name])
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    assert torch.equal(got, FusionImageProcessor("static_hd")(images[name]))


def test_ship_reports_bad_images_as_the_cpu_path_does(images: dict[str, Path], tmp_path: Path) -> None:
    """Cut short, not an image, absent: the worker raises what the CPU processor raises, so FusionDataset
    reports and skips them the same way."""
    shipping, cpu = cpu_stage(FusionImageProcessor()), FusionImageProcessor()
    whole = images["jpeg-640x480"].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff not a jpeg at all \xff\xd9")
    for path in (cut, garbage, tmp_path / "absent.jpg"):
        with pytest.raises(Exception) as want:
            cpu(path)
        with pytest.raises(type(want.value)) as got:
            shipping.ship(path)
        assert str(got.value).replace(str(path), "") == str(want.value).replace(str(path), "")


def test_cpu_processor_never_ships(images: dict[str, Path]) -> None:
    processor = FusionImageProcessor("square")
    assert not processor.ships_compressed
    assert torch.equal(processor.ship(images["jpeg-640x480"]), processor(images["jpeg-640x480"]))
    assert not FusionImageProcessor(device="cuda", exact=True).ships_compressed


def test_without_cuda_a_device_processor_warns_once_and_stays_on_the_cpu(
    images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    if vision._gpu_decoder_available():
        pytest.skip("CUDA and torchvision are available: the GPU tests cover this")
    monkeypatch.setattr(vision, "_warned_cpu_fallback", False)
    with pytest.warns(RuntimeWarning, match=r"device='cuda'.*on the CPU") as caught:
        first = FusionImageProcessor("static_hd", device="cuda")
        assert not first.ships_compressed
        for _ in range(3):  # more processors, more images: still the one warning
            other = FusionImageProcessor("pad", device="cuda")
            assert not other.ships_compressed
            got = other.ship(images["jpeg-640x480"])
            assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not FusionImageProcessor(device="cuda").ships_compressed


def test_the_shipping_decision_travels_with_the_processor() -> None:
    processor = cpu_stage(FusionImageProcessor("pad"))
    copy = pickle.loads(pickle.dumps(processor))
    assert copy.ships_compressed and copy._stage() == ("cpu", "pillow")
    decided = FusionImageProcessor(device="cuda")
    decided._ships = True  # as decided in the main process before the workers start
    assert pickle.loads(pickle.dumps(decided)).ships_compressed


# -- a batch of shipped images ------------------------------------------------------------------------------


def shipped_column(processor: FusionImageProcessor, layout: list[Any], images: dict[str, Path]) -> list[Any]:
    """The `_pixel_values` column a worker builds: per item None, one image or a list of them."""

    def one(name: str) -> Any:
        return processor.ship(images[name])

    return [None if e is None else [one(n) for n in e] if isinstance(e, list) else one(e) for e in layout]


def cpu_column(processor: FusionImageProcessor, layout: list[Any], images: dict[str, Path]) -> list[Any]:
    def one(name: str) -> Any:
        return processor(images[name])

    return [None if e is None else [one(n) for n in e] if isinstance(e, list) else one(e) for e in layout]


def assert_close(got: Any, want: Any) -> None:
    """Same structure (stacked tensor, list, None), tensors within the tolerance."""
    if want is None:
        assert got is None
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
    else:
        assert isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype
        assert (got.cpu() - want).abs().mean().item() <= DEFAULT_TOLERANCE


LAYOUTS = {
    "all-jpeg": ["jpeg-640x480", "jpeg-1024x768", "gray-jpeg", "exif-rotated"],
    "mixed": ["png", "jpeg-640x480", "cmyk-jpeg", "tiny-jpeg", "tiny-png"],
    "with-gaps": ["jpeg-640x480", None, ["png", "jpeg-480x640"], "cmyk-jpeg"],
    "none-first": [None, "jpeg-640x480"],
    "cpu-only": ["png", "cmyk-jpeg"],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_shipped_batch_equals_the_collated_cpu_batch(images: dict[str, Path], layout: str, mode: str) -> None:
    from fusion_fast.torch import PIXELS_KEY, collate

    processor = FusionImageProcessor(mode)
    shipping = cpu_stage(processor)
    batch = ShippedBatch.pack(shipped_column(shipping, LAYOUTS[layout], images), shipping)
    want = collate([{PIXELS_KEY: v} for v in cpu_column(processor, LAYOUTS[layout], images)])[PIXELS_KEY]
    assert_close(batch.to_device(), want)
    assert_close(pickle.loads(pickle.dumps(batch)).to_device(), want)


def test_pack_keeps_one_flat_buffer_with_offsets(images: dict[str, Path]) -> None:
    shipping = cpu_stage(FusionImageProcessor("square"))
    names = ["jpeg-640x480", "png", "gray-jpeg"]
    batch = ShippedBatch.pack([shipping.ship(images[n]) for n in names], shipping, shared=True)
    assert batch.data.dtype == torch.uint8 and batch.data.dim() == 1 and batch.data.is_shared()
    assert (
        batch.pixels is not None
        and batch.pixels.is_shared()
        and tuple(batch.pixels.shape) == (1, 3, 384, 384)
    )
    first, third = images["jpeg-640x480"].read_bytes(), images["gray-jpeg"].read_bytes()
    assert batch.offsets.tolist() == [0, len(first), len(first) + len(third)]
    assert batch.data.numpy().tobytes() == first + third
    assert batch.slots == [0, -1, 1] and batch.layout == [0, 1, 2]


def test_shipped_bytes_are_a_tenth_of_the_tensors_or_less(images: dict[str, Path]) -> None:
    """What crosses from the workers: photo-sized JPEGs against the `static_hd` tensors they become."""
    from fusion_fast.benchmarks.vision import photo_like

    shipping = cpu_stage(FusionImageProcessor("static_hd"))
    column = [shipping.ship(photo_like(w, h, k)) for k, (w, h) in enumerate([(640, 480), (1024, 768)] * 4)]
    batch = ShippedBatch.pack(column, shipping)
    tensors = batch.to_device()
    assert isinstance(tensors, torch.Tensor) and batch.pixels is None
    decoded_pixels = sum(3 * w * h for w, h in [(640, 480), (1024, 768)] * 4)
    assert batch.nbytes * 10 <= tensors.numel() * tensors.element_size()
    assert batch.nbytes * 8 <= decoded_pixels  # even against the decoded uint8 pixels (about 9x)


def test_pin_memory_pins_the_flat_buffer_and_the_cpu_tensors(
    images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataLoader's `pin_memory=True` reaches `ShippedBatch.pin_memory`, which pins two tensors: the
    compressed bytes and the CPU-processed images (pinning itself needs CUDA: recorded here)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    shipping = cpu_stage(FusionImageProcessor("pad"))
    batch = ShippedBatch.pack([shipping.ship(images[n]) for n in ("jpeg-640x480", "png")], shipping)
    pinned: list[int] = []

    def record(t: torch.Tensor, device: Any = None) -> torch.Tensor:
        pinned.append(t.numel())
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    got = pin_memory({"id": ["a", "b"], "_pixel_values": batch})
    assert isinstance(got["_pixel_values"], ShippedBatch)
    assert sorted(pinned) == sorted([batch.data.numel(), 3 * CROP * CROP])
    assert_close(got["_pixel_values"].to_device(), batch.to_device())


def test_a_jpeg_the_decoder_refuses_is_decoded_by_pillow(images: dict[str, Path], monkeypatch) -> None:
    calls: list[int] = []

    def picky(encoded: Any, device: torch.device) -> list[torch.Tensor]:
        calls.append(len(encoded))
        if any(raw.numel() == images["gray-jpeg"].stat().st_size for raw in encoded):
            raise RuntimeError("unsupported")
        return decode_pillow(encoded, device)

    from fusion_fast import vision_device

    monkeypatch.setitem(DECODERS, "picky", picky)
    monkeypatch.setattr(vision_device, "_warned_host_decode", False)
    processor = FusionImageProcessor("square")
    shipping = processor._with_device_stage("cpu", "picky")
    names = ["jpeg-640x480", "gray-jpeg", "tiny-jpeg"]
    batch = ShippedBatch.pack([shipping.ship(images[n]) for n in names], shipping)
    with pytest.warns(RuntimeWarning, match=r"refused an image \(RuntimeError: unsupported\).*Pillow"):
        got = batch.to_device()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process
        batch.to_device()
    assert calls == [3, 1, 1, 1, 3, 1, 1, 1]  # the batch, then one by one
    assert_close(got, torch.stack([processor(images[n]) for n in names]))


@pytest.mark.parametrize(
    ("version", "calls"), [("0.18.1", [1, 1, 1]), ("0.19.0", [3]), ("0.25.0+cu132", [3])]
)
def test_nvjpeg_decoder_batches_where_torchvision_can(
    images: dict[str, Path], monkeypatch: pytest.MonkeyPatch, version: str, calls: list[int]
) -> None:
    """torchvision decodes a list of JPEGs in one call from 0.19; before, one call per image."""
    import sys
    import types

    from fusion_fast import vision_device

    seen: list[int] = []

    def decode_jpeg(raw: Any, mode: object = None, device: object = None) -> Any:
        assert mode == "RGB" and device == CPU
        if isinstance(raw, list):
            assert version >= "0.19", "torchvision before 0.19 takes one tensor"
            seen.append(len(raw))
            return decode_pillow(raw, CPU)
        seen.append(1)
        return decode_pillow([raw], CPU)[0]

    fake = types.ModuleType("torchvision")
    fake.__version__ = version  # type: ignore[attr-defined]
    io_module = types.ModuleType("torchvision.io")
    io_module.ImageReadMode = types.SimpleNamespace(RGB="RGB")  # type: ignore[attr-defined]
    io_module.decode_jpeg = decode_jpeg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.io", io_module)
    vision_device._batched_decode.cache_clear()
    try:
        names = ["jpeg-640x480", "gray-jpeg", "tiny-jpeg"]
        raws = [torch.frombuffer(bytearray(images[n].read_bytes()), dtype=torch.uint8) for n in names]
        got = vision_device.decode_nvjpeg(raws, CPU)
    finally:
        vision_device._batched_decode.cache_clear()
    assert seen == calls
    for g, n in zip(got, names, strict=True):
        assert torch.equal(g, decoded(images[n]))


def test_a_jpeg_nothing_can_decode_raises_the_record_error(images: dict[str, Path]) -> None:
    """A complete-looking JPEG whose compressed data is not: the worker cannot tell without decoding it,
    so the error comes from the device stage, with the message the CPU path gives."""
    whole = images["jpeg-640x480"].read_bytes()
    sos = whole.index(b"\xff\xda")
    broken = whole[: sos + 2] + b"\x00\x01" + whole[-2:]  # the scan header itself cut short
    shipping = cpu_stage(FusionImageProcessor("square"))
    shipped = shipping.ship(broken)
    assert isinstance(shipped, ShippedImage)
    shipped.where = ("data.jsonl", 7, "dataset 'data', record 7 (id 'x'): cannot decode image /img/b.jpg")
    good = shipping.ship(whole)
    batch = ShippedBatch.pack([good, shipped], shipping)
    with pytest.raises(
        RecordError, match=r"data.jsonl: dataset 'data', record 7 \(id 'x'\): cannot decode"
    ) as e:
        batch.to_device()
    assert e.value.record == 7 and e.value.path == "data.jsonl"
    with pytest.raises(Exception) as cpu_error:
        FusionImageProcessor("square")(broken)
    assert str(cpu_error.value) in str(e.value)


def test_a_transform_that_replaces_the_shipped_image_is_named() -> None:
    shipping = cpu_stage(FusionImageProcessor())
    with pytest.raises(TypeError, match="a transform must leave _pixel_values as it is"):
        ShippedBatch.pack([np.zeros(3)], shipping)


# -- on a GPU ---------------------------------------------------------------------------------------------


def _cuda_decoder() -> bool:
    return vision._gpu_decoder_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_nvjpeg_batch_within_tolerance_of_the_cpu_processor(images: dict[str, Path], mode: str) -> None:
    if not _cuda_decoder():
        pytest.skip("needs torchvision with nvJPEG")
    processor = FusionImageProcessor(mode, device="cuda")
    assert processor.ships_compressed
    names = list(SOURCES)
    column = [processor.ship(images[n]) for n in names]
    assert sum(isinstance(v, ShippedImage) for v in column) >= 9  # the JPEGs but CMYK
    batch = ShippedBatch.pack(column, processor).pin_memory()
    got = batch.to_device("cuda", non_blocking=True)
    assert isinstance(got, torch.Tensor) and got.device.type == "cuda"
    for k, name in enumerate(names):
        expected = fusion_reference(images[name], mode)
        diff = np.abs(got[k].cpu().numpy() - expected).mean()
        assert diff <= DEFAULT_TOLERANCE, f"{name}: mean absolute difference {diff:.4f}"
        cpu = FusionImageProcessor(mode)(images[name]).numpy()
        assert np.abs(got[k].cpu().numpy() - cpu).mean() <= DEFAULT_TOLERANCE, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_and_pillow_decode_alike(images: dict[str, Path]) -> None:
    """nvJPEG's colour conversion and upsampling against libjpeg's: close in the mean, not identical."""
    if not _cuda_decoder():
        pytest.skip("needs torchvision with nvJPEG")
    from fusion_fast.vision_device import decode_nvjpeg

    for name in ("jpeg-640x480", "gray-jpeg", "exif-rotated", "one-pixel-jpeg"):
        raw = torch.frombuffer(bytearray(images[name].read_bytes()), dtype=torch.uint8)
        gpu = decode_nvjpeg([raw], torch.device("cuda"))[0].cpu()
        cpu = decoded(images[name])
        assert gpu.shape == cpu.shape, name
        assert (gpu.float() - cpu.float()).abs().mean() <= 2.0, name  # levels of 255


# -- the DataLoader path: workers ship bytes, the prefetcher decodes --------------------------------------


def loader_files(tmp_path: Path) -> tuple[Path, Path]:
    """Records over JPEGs, a PNG, a CMYK JPEG, a grayscale one, bad images and a text-only record."""
    import json

    folder = tmp_path / "imgs"
    folder.mkdir()
    save(textured(640, 480, 1), folder / "a.jpg", "JPEG", quality=90)
    save(textured(300, 500, 2), folder / "b.png", "PNG")
    save(textured(900, 600, 3).convert("L"), folder / "gray.jpg", "JPEG", quality=90)
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg \xff\xd9")
    save(textured(500, 700, 4), folder / "c.jpg", "JPEG", quality=85)
    save(textured(800, 600, 5).convert("CMYK"), folder / "cmyk.jpg", "JPEG", quality=90)
    whole = save(textured(700, 500, 6), folder / "whole.jpg", "JPEG", quality=90).read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    save(textured(1024, 768, 7), folder / "e.jpg", "JPEG", quality=90)
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    images: list[Any] = ["a.jpg", "b.png", "missing.jpg", "gray.jpg", "garbage.jpg"]
    images += [["c.jpg", "cmyk.jpg"], None, "cut.jpg", "e.jpg"]
    records = [
        {"id": f"r{k}", "conversations": turns, **({} if image is None else {"image": image})}
        for k, image in enumerate(images)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, folder


def loader(ds: Any, workers: int, context: str | None = None) -> Any:
    from torch.utils.data import DataLoader

    from fusion_fast.torch import collate

    return DataLoader(
        ds,
        batch_size=3,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context=context if workers else None,
        sampler=list(range(len(ds))),
    )


@pytest.mark.parametrize(
    ("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")], ids=["0-workers", "fork", "spawn"]
)
def test_loader_batches_equal_the_cpu_batches(tmp_path: Path, workers: int, context: str | None) -> None:
    """Workers ship the compressed JPEGs (the batches leave the DataLoader holding a ShippedBatch), the
    prefetcher's device stage decodes and preprocesses them, and every batch equals the one the CPU
    processor gives: same ids, same structure (stacked or per-item lists), tensors within the tolerance,
    the same bad samples skipped for the same causes."""
    from fusion_fast.torch import PIXELS_KEY, CudaPrefetcher, FusionDataset

    path, folder = loader_files(tmp_path)
    processor = FusionImageProcessor("static_hd")
    cpu = FusionDataset(path, image_folder=folder, image_processor=processor, on_error="skip")
    shipping = FusionDataset(path, image_folder=folder, image_processor=cpu_stage(processor), on_error="skip")
    want = list(loader(cpu, 0))
    raw = list(loader(shipping, workers, context))
    assert all(isinstance(b[PIXELS_KEY], ShippedBatch) for b in raw)
    assert [b["id"] for b in want] == [["r0", "r1", "r3"], ["r3", "r5", "r5"], ["r6", "r8", "r8"]]
    got = list(CudaPrefetcher(loader(shipping, workers, context), device="cpu"))
    assert [b["id"] for b in got] == [b["id"] for b in want]
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)  # the same fields in the same order
        assert_close(g[PIXELS_KEY], w[PIXELS_KEY])
    assert isinstance(got[0][PIXELS_KEY], torch.Tensor)  # a JPEG, a PNG and a grayscale JPEG: stacked
    assert tuple(got[0][PIXELS_KEY].shape) == (3, 5, 3, CROP, CROP)
    assert cpu.skip_causes == {"missing_image": 1, "unreadable_image": 2}  # one epoch
    assert shipping.skip_causes == {"missing_image": 2, "unreadable_image": 4}  # two


def test_bad_images_raise_the_cpu_paths_errors(tmp_path: Path) -> None:
    from fusion_fast.torch import FusionDataset

    path, folder = loader_files(tmp_path)
    processor = FusionImageProcessor("pad")
    cpu = FusionDataset(path, image_folder=folder, image_processor=processor)
    shipping = FusionDataset(path, image_folder=folder, image_processor=cpu_stage(processor))
    for i, pattern in ((2, "image not found"), (4, "cannot decode image"), (7, "cannot decode image")):
        with pytest.raises(RecordError, match=pattern) as want:
            cpu[i]
        with pytest.raises(RecordError) as got:
            shipping[i]
        assert str(got.value) == str(want.value)
        with pytest.raises(RecordError) as through_workers:
            next(iter(loader(torch.utils.data.Subset(shipping, [i]), 2, "fork")))
        assert str(want.value) in str(through_workers.value)  # after the worker's traceback


def test_a_corrupt_jpeg_found_on_the_device_names_its_record(tmp_path: Path) -> None:
    """A JPEG whose header and end marker are whole but whose scan is not: only decoding finds it, on the
    device, where the batch has left the dataset: the prefetcher raises the CPU path's RecordError."""
    from fusion_fast.torch import CudaPrefetcher, FusionDataset

    path, folder = loader_files(tmp_path)
    whole = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(whole[: whole.index(b"\xff\xda") + 2] + b"\x00\x01" + whole[-2:])
    processor = FusionImageProcessor("square")
    with pytest.raises(RecordError) as want:
        FusionDataset(path, image_folder=folder, image_processor=processor)[0]
    shipping = FusionDataset(path, image_folder=folder, image_processor=cpu_stage(processor))
    with pytest.raises(RecordError) as got:
        next(iter(CudaPrefetcher(loader(torch.utils.data.Subset(shipping, [0, 1]), 2, "fork"), device="cpu")))
    assert str(got.value) == str(want.value)
    assert got.value.record == 0 and got.value.path == str(path)
    assert isinstance(got.value.__cause__, Exception)  # Pillow's own error, kept as the cause


@pytest.mark.parametrize("workers", [0, 2])
def test_without_cuda_the_workers_decode_and_warn_once(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from fusion_fast.torch import PIXELS_KEY, CudaPrefetcher, FusionDataset

    if vision._gpu_decoder_available():
        pytest.skip("CUDA and torchvision are available: the GPU tests cover this")
    monkeypatch.setattr(vision, "_warned_cpu_fallback", False)
    path, folder = loader_files(tmp_path)
    with pytest.warns(RuntimeWarning, match="on the CPU") as caught:
        ds = FusionDataset(
            path, image_folder=folder, image_processor=FusionImageProcessor(device="cuda"), on_error="skip"
        )
        batches = list(CudaPrefetcher(loader(ds, workers, "spawn")))
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert "on the CPU" not in capfd.readouterr().err  # no worker warned again
    cpu = FusionDataset(path, image_folder=folder, image_processor=FusionImageProcessor(), on_error="skip")
    want = list(loader(cpu, 0))
    for g, w in zip(batches, want, strict=True):
        assert not isinstance(g[PIXELS_KEY], ShippedBatch)
        assert_close(g[PIXELS_KEY], w[PIXELS_KEY])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_gpu_loader_and_prefetcher_equal_the_cpu_batches(tmp_path: Path, mode: str) -> None:
    """The whole GPU path: 2 workers ship bytes, the DataLoader pins them, CudaPrefetcher decodes with
    nvJPEG and preprocesses on its side stream; the training loop sees CPU-equal batches on the GPU."""
    if not _cuda_decoder():
        pytest.skip("needs torchvision with nvJPEG")
    from torch.utils.data import DataLoader

    from fusion_fast.torch import PIXELS_KEY, CudaPrefetcher, FusionDataset, collate

    path, folder = loader_files(tmp_path)
    cpu = FusionDataset(
        path, image_folder=folder, image_processor=FusionImageProcessor(mode), on_error="skip"
    )
    gpu_processor = FusionImageProcessor(mode, device="cuda")
    gpu = FusionDataset(path, image_folder=folder, image_processor=gpu_processor, on_error="skip")
    assert gpu_processor.ships_compressed
    want = list(loader(cpu, 0))
    pinned = DataLoader(gpu, batch_size=3, num_workers=2, collate_fn=collate, pin_memory=True)
    got = list(CudaPrefetcher(pinned))
    assert [b["id"] for b in got] == [b["id"] for b in want]
    for g, w in zip(got, want, strict=True):
        values = g[PIXELS_KEY]
        first = values if isinstance(values, torch.Tensor) else next(v for v in values if v is not None)
        assert (first if isinstance(first, torch.Tensor) else first[0]).is_cuda
        assert_close(values, w[PIXELS_KEY])
    assert gpu.skip_causes == cpu.skip_causes


# -- the GPU benchmark's image path, with its device stage on the CPU ---------------------------------------


def test_gpu_benchmark_image_path_runs_on_the_cpu(tmp_path: Path) -> None:
    """What `python -m fusion_fast.benchmarks.gpu` measures of the image path, run small here: the JPEG set,
    one epoch of each path through DataLoader workers and the prefetcher, the device stage alone."""
    import json

    from fusion_fast.benchmarks.gpu import IMAGE_SIZES, image_path, image_report, write_jpeg_set

    data = write_jpeg_set(tmp_path, 6, distinct=3)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert [r["image"] for r in records] == ["640x480-0.jpg", "1024x768-1.jpg", "640x480-2.jpg"] * 2
    for r in records[:3]:
        with Image.open(tmp_path / r["image"]) as img:
            assert img.format == "JPEG" and img.size in IMAGE_SIZES
    shipping = cpu_stage(FusionImageProcessor("static_hd"))
    figures = image_path(6, 2, 2, processor=shipping, device="cpu", stage_reps=1)
    assert figures["ships_compressed"]
    for key in ("bytes_path", "cpu_path"):
        assert figures[key]["images"] == 6
        assert figures[key]["cpu_s_per_image"] > 0
    assert figures["bytes_path"]["checksum"] == pytest.approx(figures["cpu_path"]["checksum"], abs=0.5)
    assert figures["device_stage_images_per_s"] > 0
    text = image_report(figures)
    assert "bytes -> nvJPEG + GPU preprocessing" in text and "images / s" in text


def _corrupt_scan(path: Path) -> None:
    """Keep the JPEG's header and end marker, break its entropy-coded data: only decoding finds it."""
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b"\xff\xda") + 2] + b"\x00\x01" + whole[-2:])


@pytest.mark.parametrize(
    ("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")], ids=["0-workers", "fork", "spawn"]
)
def test_a_corrupt_jpeg_is_skipped_in_the_worker_as_on_the_cpu_path(
    tmp_path: Path, workers: int, context: str | None
) -> None:
    """With on_error="skip" the worker checks each JPEG it ships (a decode at libjpeg's smallest scale
    reads the whole scan), so a broken one is replaced and counted there, as on the CPU path, instead
    of failing the batch on the device."""
    from fusion_fast.torch import CudaPrefetcher, FusionDataset

    path, folder = loader_files(tmp_path)
    _corrupt_scan(folder / "a.jpg")
    processor = FusionImageProcessor("square")
    cpu = FusionDataset(path, image_folder=folder, image_processor=processor, on_error="skip")
    shipping = FusionDataset(path, image_folder=folder, image_processor=cpu_stage(processor), on_error="skip")
    want = list(loader(cpu, 0))
    got = list(CudaPrefetcher(loader(shipping, workers, context), device="cpu"))
    assert [b["id"] for b in want] == [["r1", "r1", "r3"], ["r3", "r5", "r5"], ["r6", "r8", "r8"]]
    assert [b["id"] for b in got] == [b["id"] for b in want]
    assert shipping.skip_causes == cpu.skip_causes == {"missing_image": 1, "unreadable_image": 3}
    assert shipping.skipped == cpu.skipped == 4  # once each over the epoch


def test_a_corrupt_jpeg_skipped_in_the_worker_has_the_cpu_paths_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from fusion_fast.torch import FusionDataset

    path, folder = loader_files(tmp_path)
    _corrupt_scan(folder / "a.jpg")
    processor = FusionImageProcessor("static_hd")
    messages = []
    for p in (processor, cpu_stage(processor)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fusion_fast.torch"):
            item = FusionDataset(path, image_folder=folder, image_processor=p, on_error="skip")[0]
        assert item["id"] == "r1"
        messages += [r.getMessage() for r in caplog.records if r.name == "fusion_fast.torch"]
    assert len(messages) == 2 and messages[0] == messages[1] and "cannot decode image" in messages[0]


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork")], ids=["0-workers", "fork"])
def test_with_raise_the_worker_ships_a_corrupt_jpeg_unchecked(
    tmp_path: Path, workers: int, context: str | None
) -> None:
    """on_error="raise" costs the workers no check: the device finds the broken JPEG and the prefetcher
    raises the CPU path's RecordError."""
    from fusion_fast.torch import PIXELS_KEY, CudaPrefetcher, FusionDataset

    path, folder = loader_files(tmp_path)
    _corrupt_scan(folder / "a.jpg")
    shipping = FusionDataset(
        path, image_folder=folder, image_processor=cpu_stage(FusionImageProcessor("pad"))
    )
    assert isinstance(shipping[0][PIXELS_KEY], ShippedImage)
    with pytest.raises(RecordError, match="cannot decode image") as got:
        list(
            CudaPrefetcher(loader(torch.utils.data.Subset(shipping, [0, 1]), workers, context), device="cpu")
        )
    assert got.value.record == 0

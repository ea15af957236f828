"""FUSION's image preprocessing (`static_hd`, `pad`, `square`) as one callable, fast by default.

FUSION's training reads each image with Pillow (`Image.open(path).convert("RGB")`, no EXIF rotation)
and then, by `image_aspect_ratio`:

- `static_hd`: resize to 2*crop x 2*crop (Pillow's default bicubic), cut four crop x crop patches in
  row-major order, add the original resized to crop x crop as the global view, and run all five through
  the SigLIP processor: shape `(5, 3, crop, crop)`;
- `pad`: paste onto a square of the longer side filled with the processor mean (`int(m * 255)`), then
  the processor: shape `(3, crop, crop)`;
- `square` (anything else in FUSION): the processor alone: shape `(3, crop, crop)`.

The SigLIP processor resizes to crop x crop (bicubic), scales by 1/255 and normalises with `mean`/`std`.

`exact=True` repeats that computation and equals it to float precision. The default computes the same
tensor within a mean absolute difference of 0.02 on the normalised scale (about 2.5 levels of 255;
typically much less): it decodes JPEGs at a reduced scale when the target size allows (libjpeg's DCT
scaling, Pillow's `draft`, never below 3 times the first resize's output on either axis, so that text
pages, stripes and checkerboards stay within the bound too), resizes with torch's uint8 antialiased bicubic
(Pillow's filter, vectorised) and normalises all views in one pass. Images that are not JPEG (files,
bytes, or any PIL image that is not a JPEG file being read) take the exact computation.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FusionImageProcessor", "MODES", "DEFAULT_TOLERANCE"]

Mode = Literal["static_hd", "pad", "square"]
MODES: tuple[str, ...] = ("static_hd", "pad", "square")

#: Documented bound on the mean absolute difference between the default (fast) result and FUSION's.
DEFAULT_TOLERANCE = 0.02

#: How much larger than the first resize's output a JPEG decoded at a reduced scale must stay, per axis.
_DRAFT_MARGIN = 3

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Any  # Any: a PIL image


class FusionImageProcessor:
    """`processor(image)` -> FUSION's float32 tensor for `image` (a path, the file's bytes or a PIL image).

    `mode`: FUSION's `image_aspect_ratio` (`"static_hd"`, `"pad"` or `"square"`). `crop_size`, `mean`,
    `std`: the SigLIP processor's settings (FUSION's defaults). `exact=True` matches FUSION's Pillow +
    SigLIP computation to float precision; the default is faster and within `DEFAULT_TOLERANCE` for
    JPEGs, and takes the exact computation for every other image. A path that is no file is looked up
    in its folder's image store (`fusion_fast.images.read_path`).
    `device="cuda"` (default mode, a path or bytes): JPEGs are decoded with nvJPEG
    (`torchvision.io.decode_jpeg`) and resized and normalised on that device, within the same tolerance,
    and the result is on the device; images nvJPEG cannot decode (CMYK, not JPEG) take the CPU path and
    the result is moved there. Without CUDA or without torchvision, the CPU path and a CPU result.
    Given to `FusionDataset(image_processor=...)`, a `device="cuda"` processor makes DataLoader workers
    ship JPEGs compressed (`ship`, `ships_compressed`) and `CudaPrefetcher` decode and preprocess them on
    the GPU (`fusion_fast.vision_device`); without CUDA or torchvision the workers process images on the
    CPU as with `device="cpu"`, after one warning.
    Instances pickle, so they can go into DataLoader workers with a `FusionDataset`.
    """

    def __init__(
        self,
        mode: Mode = "static_hd",
        crop_size: int = 384,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        exact: bool = False,
        device: str = "cpu",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, not {crop_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if any(s == 0 for s in std):
            raise ValueError("std must not be 0")
        self.mode: Mode = mode
        self.crop_size = int(crop_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.exact = exact
        self.device = device
        # FUSION's pad colour: `tuple(int(x * 255) for x in processor.image_mean)`
        self.background = tuple(int(m * 255) for m in self.mean)
        # whether workers ship compressed JPEGs: decided once, in the process that first asks (the main
        # process, by FusionDataset), and carried to the workers with the processor
        self._ships: bool | None = None
        # (device, decoder name) replacing the device stage's (the device and nvJPEG): lets tests run
        # the whole shipped-bytes path on the CPU, with Pillow decoding
        self._device_stage: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return (
            f"FusionImageProcessor(mode={self.mode!r}, crop_size={self.crop_size}, mean={self.mean}, "
            f"std={self.std}, exact={self.exact}, device={self.device!r})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of every result."""
        c = self.crop_size
        return (5, 3, c, c) if self.mode == "static_hd" else (3, c, c)

    # -- shipping compressed images to the device --------------------------------------------------
    @property
    def ships_compressed(self) -> bool:
        """Whether `ship` hands JPEGs over compressed, for the device to decode: with `device` other than
        "cpu" (and not `exact`) where CUDA and torchvision's nvJPEG decoder are available. Otherwise
        False, with one warning per process when a device was asked for."""
        if self._device_stage is not None:
            return True
        if self.device == "cpu" or self.exact:
            return False
        if self._ships is None:
            self._ships = _gpu_decoder_available()
            if not self._ships:
                _warn_cpu_fallback(self.device)
        return self._ships

    def ship(self, image: ImageSource, validate: bool = False) -> Any:
        """What a DataLoader worker puts in the item for `image`: with `ships_compressed`, a JPEG the
        device decoder takes as Pillow would (an RGB or grayscale JPEG that ends with its end-of-image
        marker) as a `fusion_fast.vision_device.ShippedImage` of its bytes; anything else processed on
        the CPU, the CPU path's tensor on the CPU (never on a GPU, so workers never touch CUDA). Errors
        are the CPU path's: `FileNotFoundError`, and Pillow's for images it cannot decode.

        `validate=True` (what `FusionDataset` asks when its `on_error` is not "raise") decodes each JPEG
        it ships at libjpeg's smallest scale (1/8): that still reads the whole entropy-coded data, so a
        JPEG whose data is broken raises Pillow's error here, in the worker, as the CPU path would, not
        later on the device, where the batch has left the dataset and its bad-sample policy."""
        from PIL import Image

        if isinstance(image, Image.Image):
            return self._from_pil(image)
        if not self.ships_compressed:
            return self._cpu(image)
        data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else _read(image)
        if _device_decodable(data):
            from .vision_device import ShippedImage

            if validate:
                _check_decodes(data)
            return ShippedImage(data, self)
        # from the path when there is one: Pillow's messages then name the file, as the CPU path's do
        return self._cpu(data if isinstance(image, (bytes, bytearray, memoryview)) else image)

    def _stage(self) -> tuple[str, str]:
        """The device and decoder (a `fusion_fast.vision_device.DECODERS` name) of the device stage."""
        if self._device_stage is not None:
            return self._device_stage
        return self.device, "nvjpeg"

    def _with_device_stage(self, device: str, decoder: str) -> FusionImageProcessor:
        """A copy that ships compressed JPEGs and decodes them with `decoder` on `device`."""
        import copy

        other = copy.copy(self)
        other._device_stage = (device, decoder)
        return other

    # -- entry point ---------------------------------------------------------------------------------
    def __call__(self, image: ImageSource) -> torch.Tensor:
        from PIL import Image

        if isinstance(image, Image.Image):
            return self._on_device(self._from_pil(image))
        if self.device != "cpu" and not self.exact and _gpu_decoder_available():
            data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else _read(image)
            if data[:3] == b"\xff\xd8\xff":
                try:
                    return self._gpu(data)
                except RuntimeError:  # nvJPEG cannot decode it (CMYK, for one): Pillow can
                    pass
            image = data
        return self._on_device(self._cpu(image))

    def _on_device(self, result: torch.Tensor) -> torch.Tensor:
        if self.device != "cpu" and torch.cuda.is_available():
            return result.to(self.device)
        return result

    def _cpu(self, image: ImageSource) -> torch.Tensor:
        from PIL import Image

        from .images import open_path  # a file, else a member of its folder's image store

        if isinstance(image, (bytes, bytearray, memoryview)):
            opened: Any = Image.open(io.BytesIO(bytes(image)))
        else:
            opened = open_path(os.fspath(image))
        with opened as img:
            if not self.exact and img.format == "JPEG":
                img.draft("RGB", self._draft_size(img.size))
            return self._from_pil(img)

    def _draft_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The smallest size the decoded JPEG may have: `_DRAFT_MARGIN` times, on each axis, the size the
        first resize produces (2*crop square for `static_hd`, crop square for `square`, and for `pad` the
        image's share of the padded square scaled to crop). libjpeg's DCT scaling filters far less
        sharply than the antialiased bicubic it stands in for: with a margin of 2, text pages, stripes
        and checkerboards differ from FUSION by up to 0.05; with 3 they stay under 0.015."""
        c = self.crop_size
        if self.mode == "static_hd":
            return (_DRAFT_MARGIN * 2 * c, _DRAFT_MARGIN * 2 * c)
        if self.mode == "square":
            return (_DRAFT_MARGIN * c, _DRAFT_MARGIN * c)
        w, h = size  # pad: the longer side becomes crop, the shorter keeps its proportion
        side = max(w, h)
        return (max(1, -(-_DRAFT_MARGIN * c * w // side)), max(1, -(-_DRAFT_MARGIN * c * h // side)))

    def _from_pil(self, img: Any) -> torch.Tensor:
        """The result for a PIL image of any mode: the fast path for JPEGs only, the exact computation
        for everything else (PNG, WebP, images made in memory), as FUSION's tolerance allows no more."""
        fast = not self.exact and img.format == "JPEG"
        rgb = img.convert("RGB")
        return self._fast(rgb) if fast else self._exact(rgb)

    # -- exact: FUSION's steps, then a lookup table equal to SigLIP's float arithmetic ---------------
    def _exact(self, img: Any) -> torch.Tensor:
        from PIL import Image

        c = self.crop_size
        if self.mode == "static_hd":
            resized = img.resize((2 * c, 2 * c))  # FUSION: Pillow's default filter (bicubic)
            views = [
                resized.crop((j, i, j + c, i + c)) for i in range(0, 2 * c, c) for j in range(0, 2 * c, c)
            ]
            views.append(img.resize((c, c)))
        elif self.mode == "pad":
            views = [_expand2square(img, self.background)]
        else:
            views = [img]
        arrays = [np.asarray(v.resize((c, c), Image.Resampling.BICUBIC)) for v in views]
        pixels = np.stack(arrays)  # (n, c, c, 3) uint8
        out = np.empty((len(arrays), 3, c, c), dtype=np.float32)
        tables = self._tables()
        for ch in range(3):
            np.take(tables[ch], pixels[..., ch], out=out[:, ch])
        result = torch.from_numpy(out)
        return result if self.mode == "static_hd" else result[0]

    def _tables(self) -> np.ndarray:
        """(3, 256) float32: SigLIP's `(v * (1/255) [float64 -> float32] - mean) / std` in float32."""
        scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        mean = np.array(self.mean, dtype=np.float32)[:, None]
        std = np.array(self.std, dtype=np.float32)[:, None]
        tables: np.ndarray = (scaled[None, :] - mean) / std
        return tables

    # -- fast: one resize per view from the smallest decode, vectorised normalisation -----------------
    def _fast(self, img: Any) -> torch.Tensor:
        c = self.crop_size
        if self.mode == "pad":
            img = _expand2square(img, self.background)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8))  # (h, w, 3), writable
        x = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w) channels-last: torch's fast uint8 path
        if self.mode == "static_hd":
            big = _resize(x, 2 * c)
            views = [big[:, :, i : i + c, j : j + c] for i in (0, c) for j in (0, c)]
            # the global view from the decoded image, as FUSION does: from the 2*crop image, content near
            # its Nyquist limit (stripes, small text) aliases into moire that differs by up to 0.06
            views.append(_resize(x, c))
            stacked = torch.cat(views)
        else:
            stacked = _resize(x, c)
        scale = torch.tensor([1 / (255 * s) for s in self.std], dtype=torch.float32).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)]).view(1, 3, 1, 1)
        out = torch.empty(stacked.shape, dtype=torch.float32)
        torch.mul(stacked, scale, out=out)
        out.sub_(shift.to(torch.float32))
        return out if self.mode == "static_hd" else out[0]

    # -- GPU: nvJPEG decode, then the fast path's steps in float on the device ------------------------
    def _gpu(self, data: bytes) -> torch.Tensor:
        from .vision_device import decode_nvjpeg, preprocess_decoded

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decoded = decode_nvjpeg([raw], torch.device(self.device))  # (3, h, w) uint8, no EXIF rotation
        return preprocess_decoded(decoded, self)[0]


def _gpu_decoder_available() -> bool:
    """CUDA and torchvision's nvJPEG decoder are both there."""
    return torch.cuda.is_available() and _torchvision_decoder()


@functools.cache
def _torchvision_decoder() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # absent, or built for another torch
        return False
    return True


#: Whether this process has said that a device processor falls back to the CPU.
_warned_cpu_fallback = False


def _warn_cpu_fallback(device: str) -> None:
    global _warned_cpu_fallback
    if _warned_cpu_fallback:
        return
    _warned_cpu_fallback = True
    missing = "CUDA is not available" if not torch.cuda.is_available() else "torchvision cannot be imported"
    warnings.warn(
        f"FusionImageProcessor(device={device!r}): {missing}, so images are decoded and preprocessed on "
        "the CPU (in DataLoader workers when there are some); install fusion-fast[vision-gpu] on a CUDA "
        "machine for the GPU path",
        RuntimeWarning,
        stacklevel=3,
    )


#: A JPEG's first and last bytes: start-of-image, end-of-image.
_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"


def _device_decodable(data: bytes) -> bool:
    """Whether a device decoder can take `data` as Pillow would: a complete RGB or grayscale JPEG. CMYK
    JPEGs (nvJPEG cannot convert them) and files cut short (so that the worker reports them as the CPU
    path does) are left to the CPU; so is anything Pillow cannot even identify."""
    from PIL import Image, UnidentifiedImageError

    if not (data.startswith(_SOI) and data.endswith(_EOI)):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.format == "JPEG" and img.mode in ("RGB", "L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _check_decodes(data: bytes) -> None:
    """Decode a JPEG at libjpeg's smallest DCT scale: every byte of its entropy-coded data is read (at a
    small share of a full decode's cost), so broken data raises Pillow's error, as a full decode would."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
        img.load()


def _read(path: Any) -> bytes:
    """The bytes of the file `path`, else of the member of its folder's image store that it names."""
    from .images import read_path

    return read_path(os.fspath(path))


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Antialiased bicubic resize of a uint8 (1, 3, h, w) tensor to side x side (Pillow's filter)."""
    if x.shape[-2:] == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)


def _expand2square(img: Any, background: tuple[int, ...]) -> Any:
    """FUSION's `expand2square` (train.py): the image centred on a square of its longer side."""
    from PIL import Image

    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background)
    result.paste(img, ((height - width) // 2, 0))
    return result

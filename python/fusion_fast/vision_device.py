"""FUSION's image preprocessing on the training device, from the compressed JPEG bytes of a batch.

With `FusionImageProcessor(device="cuda")` given to `FusionDataset(image_processor=...)`, DataLoader
workers do not decode JPEGs: each item's `_pixel_values` holds a `ShippedImage` (the file's bytes, about
a tenth of the decoded tensor's size), `collate` packs a batch's images into one `ShippedBatch` (every
JPEG in one flat uint8 tensor with offsets, which `pin_memory=True` pins as one buffer) and
`CudaPrefetcher`, on its side stream, turns it into the tensors the CPU path would have put in the batch:

1. decoding: all JPEGs of the batch in one call to nvJPEG (`torchvision.io.decode_jpeg` on a list,
   `device="cuda"`, RGB, no EXIF rotation, as FUSION reads images). torchvision hands nvJPEG the
   compressed bytes from host memory and nvJPEG copies them to the device itself: slicing the flat buffer
   costs nothing. A JPEG nvJPEG refuses is decoded with Pillow on the host and copied;
2. `preprocess_decoded`: FUSION's `static_hd` / `pad` / `square` geometry (resizes with antialiased
   bicubic, rounded to whole levels as the CPU path's uint8 resizes are; patches in row-major order, then
   the global view; `pad`'s square filled with the processor mean) and the SigLIP rescale and
   normalisation, in one pass over the whole batch, on the device.

Images a worker cannot ship (not JPEG, CMYK, or a JPEG that does not end with its end-of-image marker)
are processed on the CPU in the worker as before; their tensors travel in the batch beside the bytes and
are copied in the same step. The result equals the CPU processor's within `DEFAULT_TOLERANCE`.

Everything here but `decode_nvjpeg` runs on any device: `preprocess_decoded` on CPU tensors is how the
tests compare this path with the CPU processor on a machine without a GPU.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import RecordError

if TYPE_CHECKING:
    from .vision import FusionImageProcessor

__all__ = [
    "ShippedImage",
    "ShippedBatch",
    "preprocess_decoded",
    "decode_nvjpeg",
    "decode_pillow",
    "DECODERS",
]

#: A decoder: compressed images (1-D uint8 CPU tensors) -> decoded (3, h, w) uint8 RGB tensors on `device`.
Decoder = Callable[[Sequence[torch.Tensor], torch.device], list[torch.Tensor]]


class ShippedImage:
    """A JPEG's compressed bytes in place of its tensor, in an item a DataLoader worker built with a
    processor that ships compressed images (`FusionImageProcessor.ships_compressed`); `processor` is
    that processor. `collate` packs these into a `ShippedBatch`. `where`: `(data file, record number,
    message)` for the `RecordError` raised if the image cannot be decoded on the device after all (set
    by `FusionDataset`)."""

    __slots__ = ("data", "processor", "where")

    def __init__(
        self, data: bytes, processor: FusionImageProcessor, where: tuple[str, int, str] | None = None
    ) -> None:
        self.data = data
        self.processor = processor
        self.where = where

    def __repr__(self) -> str:
        return f"ShippedImage({len(self.data)} bytes)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ShippedImage, (self.data, self.processor, self.where))


#: A `ShippedBatch` slot's source: JPEG number j >= 0 in the flat buffer, or CPU tensor k as -(k + 1).
Slot = int
#: One item's `_pixel_values` in a `ShippedBatch`: None (no image), a slot, or a list of slots.
Layout = int | list[int] | None


class ShippedBatch:
    """A batch's `_pixel_values` column while its JPEGs are still compressed: `data` (every JPEG's bytes,
    one flat uint8 tensor), `offsets` (int64, JPEG j is `data[offsets[j]:offsets[j + 1]]`), `pixels`
    (float32 `(k, *shape)`: the images the workers processed on the CPU, or None), `slots`, `layout` (one
    entry per item) and the `processor` whose settings apply.

    `to_device(device)` returns what `collate` would have put in the batch from the tensors themselves:
    one `(batch, *shape)` tensor when every item has exactly one image, else a list with, per item, its
    tensor, its list of tensors, or None. DataLoader's `pin_memory=True` pins `data` and `pixels`.
    """

    __slots__ = ("data", "offsets", "pixels", "slots", "layout", "where", "processor")

    def __init__(
        self,
        data: torch.Tensor,
        offsets: torch.Tensor,
        pixels: torch.Tensor | None,
        slots: list[Slot],
        layout: list[Layout],
        where: list[tuple[str, int, str] | None],
        processor: FusionImageProcessor,
    ) -> None:
        self.data = data
        self.offsets = offsets
        self.pixels = pixels
        self.slots = slots
        self.layout = layout
        self.where = where
        self.processor = processor

    @staticmethod
    def holds_shipped(value: Any) -> bool:
        """Whether one item's `_pixel_values` is (or lists) a `ShippedImage`."""
        if isinstance(value, list):
            return any(isinstance(v, ShippedImage) for v in value)
        return isinstance(value, ShippedImage)

    @classmethod
    def pack(
        cls,
        column: Sequence[Any],
        processor: FusionImageProcessor | None = None,
        shared: bool = False,
    ) -> ShippedBatch:
        """Pack a batch's `_pixel_values` values (per item: a `ShippedImage`, a CPU tensor, a list of
        those, or None) into one flat buffer; `processor` defaults to the shipped images'. `shared`:
        allocate it in shared memory (in a DataLoader worker, so that sending it to the main process
        copies nothing)."""
        if processor is None:
            first = next(
                (
                    v
                    for value in column
                    for v in (value if isinstance(value, list) else [value])
                    if isinstance(v, ShippedImage)
                ),
                None,
            )
            if first is None:
                raise ValueError("no shipped image in the batch: pass the processor")
            processor = first.processor
        blobs: list[bytes] = []
        where: list[tuple[str, int, str] | None] = []
        tensors: list[torch.Tensor] = []
        slots: list[Slot] = []

        def slot(value: Any) -> int:
            if isinstance(value, ShippedImage):
                slots.append(len(blobs))
                blobs.append(value.data)
                where.append(value.where)
            elif isinstance(value, torch.Tensor):
                slots.append(-(len(tensors) + 1))
                tensors.append(value)
            else:
                raise TypeError(
                    f"_pixel_values holds a {type(value).__name__}: expected the compressed image a worker "
                    "ships or a tensor (a transform must leave _pixel_values as it is)"
                )
            return len(slots) - 1

        layout: list[Layout] = []
        for value in column:
            if value is None:
                layout.append(None)
            elif isinstance(value, list):
                layout.append([slot(v) for v in value])
            else:
                layout.append(slot(value))
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = _empty((int(offsets[-1]),), torch.uint8, shared)
        flat = data.numpy()
        for b, start, end in zip(blobs, offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            flat[start:end] = np.frombuffer(b, dtype=np.uint8)
        pixels = None
        if tensors:
            pixels = _empty((len(tensors), *processor.shape), torch.float32, shared)
            torch.stack(tensors, out=pixels)
        return cls(data, torch.from_numpy(offsets), pixels, slots, layout, where, processor)

    def __repr__(self) -> str:
        return (
            f"ShippedBatch({len(self.layout)} items, {len(self.offsets) - 1} JPEGs in {self.data.numel()} "
            f"bytes, {0 if self.pixels is None else len(self.pixels)} processed on the CPU)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.data, self.offsets, self.pixels, self.slots, self.layout, self.where, self.processor)
        return (ShippedBatch, fields)

    @property
    def nbytes(self) -> int:
        """Bytes this batch's images take: the compressed JPEGs and the tensors processed on the CPU."""
        return self.data.numel() + (0 if self.pixels is None else self.pixels.numel() * 4)

    def pin_memory(self, device: Any = None) -> ShippedBatch:
        """The batch with `data` and `pixels` in pinned memory (DataLoader's `pin_memory=True` calls this)."""
        pixels = None if self.pixels is None else self.pixels.pin_memory()
        return ShippedBatch(
            self.data.pin_memory(), self.offsets, pixels, self.slots, self.layout, self.where, self.processor
        )

    def to_device(
        self, device: torch.device | str | None = None, non_blocking: bool = False
    ) -> torch.Tensor | list[Any]:
        """The batch's `_pixel_values` on `device` (default: the processor's), as `collate` builds them
        from tensors. JPEGs are decoded there with the processor's decoder (nvJPEG for a CUDA device),
        the others copied. Raises `RecordError` (with the message the CPU path gives) for a JPEG that
        neither the decoder nor Pillow can decode."""
        stage_device, decoder_name = self.processor._stage()
        target = torch.device(device if device is not None else stage_device)
        decoder = DECODERS[decoder_name]
        n = len(self.slots)
        out = torch.empty((n, *self.processor.shape), dtype=torch.float32, device=target)
        jpegs = [k for k, s in enumerate(self.slots) if s >= 0]
        if jpegs:
            bounds = self.offsets.tolist()
            encoded = [self.data[bounds[j] : bounds[j + 1]] for j in range(len(bounds) - 1)]
            decoded = _decode_all(encoded, target, decoder, self.where)
            if len(jpegs) == n:
                preprocess_decoded(decoded, self.processor, out=out)
            else:
                rows = torch.tensor(jpegs, device=target)
                out.index_copy_(0, rows, preprocess_decoded(decoded, self.processor))
        if self.pixels is not None:
            moved = self.pixels.to(target, non_blocking=non_blocking)
            for k, s in enumerate(self.slots):
                if s < 0:
                    out[k] = moved[-s - 1]
        if all(isinstance(entry, int) for entry in self.layout) and self.layout == list(range(n)):
            return out  # every item has one image: collate's stacked tensor
        return [
            None if entry is None else [out[s] for s in entry] if isinstance(entry, list) else out[entry]
            for entry in self.layout
        ]


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for s in shape:
        numel *= s
    like = torch.empty(0, dtype=dtype)
    storage = like._typed_storage()._new_shared(numel, device=like.device)
    return like.new(storage).resize_(shape)


# -- decoding ----------------------------------------------------------------------------------------


def decode_nvjpeg(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG through torchvision: one batched call (torchvision 0.19 and later; one call per image
    before), RGB output, no EXIF rotation (as FUSION reads)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not _batched_decode():
        return [decode_jpeg(raw, mode=ImageReadMode.RGB, device=device) for raw in encoded]
    decoded: list[torch.Tensor] = decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device)
    return decoded


@functools.cache
def _batched_decode() -> bool:
    """Whether torchvision's `decode_jpeg` takes a list of images (0.19 and later)."""
    import torchvision

    try:
        major, minor = (int(part) for part in getattr(torchvision, "__version__", "").split(".")[:2])
    except ValueError:  # no version to read: assume a current one
        return True
    return (major, minor) >= (0, 19)


def decode_pillow(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Pillow on the host (`Image.open(...).convert("RGB")`, as FUSION reads), then copied to `device`."""
    from PIL import Image

    out = []
    for raw in encoded:
        with Image.open(io.BytesIO(raw.numpy().tobytes())) as img:
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
        out.append(torch.from_numpy(rgb).permute(2, 0, 1).to(device))
    return out


#: Decoders by name, for `FusionImageProcessor`'s device stage.
DECODERS: dict[str, Decoder] = {"nvjpeg": decode_nvjpeg, "pillow": decode_pillow}


def _decode_all(
    encoded: list[torch.Tensor],
    device: torch.device,
    decoder: Decoder,
    where: Sequence[tuple[str, int, str] | None],
) -> list[torch.Tensor]:
    """Every image decoded: all in one call, else (one of them was refused) one by one, each refused one
    by Pillow; one that Pillow cannot decode either raises the `RecordError` the CPU path would."""
    try:
        return decoder(encoded, device)
    except Exception:
        pass
    out = []
    for j, raw in enumerate(encoded):
        try:
            out.append(decoder([raw], device)[0])
            continue
        except Exception as e:
            refused = e
        try:
            out.append(decode_pillow([raw], device)[0])
            _warn_host_decode(refused)
        except Exception as e:
            origin = where[j]
            if origin is None:
                raise RecordError(f"cannot decode image {j} of the batch: {e}") from e
            data_path, number, message = origin
            raise RecordError(f"{message}: {e}", path=data_path, record=number) from e
    return out


#: Whether this process has said that the device decoder refused an image Pillow then decoded.
_warned_host_decode = False


def _warn_host_decode(error: Exception) -> None:
    """Once per process: images fell back to Pillow on the host, which costs host CPU the GPU path is
    meant to save (every image, if torchvision was built without nvJPEG)."""
    global _warned_host_decode
    if _warned_host_decode:
        return
    _warned_host_decode = True
    warnings.warn(
        f"the device's JPEG decoder refused an image ({type(error).__name__}: {error}); it and any others "
        "it refuses are decoded with Pillow on the host",
        RuntimeWarning,
        stacklevel=2,
    )


# -- geometry and normalisation ------------------------------------------------------------------------


def preprocess_decoded(
    images: Sequence[torch.Tensor],
    processor: FusionImageProcessor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """FUSION's tensors for decoded images: `(len(images), *processor.shape)` float32 on the images'
    device (into `out` when given), from `(3, h, w)` uint8 RGB tensors (any sizes, one device).

    The steps of the CPU processor's default path in float arithmetic: each resize is antialiased
    bicubic and rounded to whole levels and clamped (as the uint8 resizes of the CPU path are); `pad`
    centres the image on a square filled with the processor mean first; `static_hd` cuts the 2*crop image
    into four patches in row-major order and resizes the decoded image to crop for the global view; then
    every view is
    scaled by 1/255 and normalised, all images at once."""
    c = processor.crop_size
    n = len(images)
    if out is None:
        device = images[0].device if n else torch.device("cpu")
        out = torch.empty((n, *processor.shape), dtype=torch.float32, device=device)
    if n == 0:
        return out
    device = out.device
    views = out.view(n, -1, 3, c, c)  # (n, views, 3, c, c) for every mode
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"image {k}: expected a (3, h, w) uint8 RGB tensor, not {tuple(image.shape)} {image.dtype}"
            )
        by_size.setdefault((image.shape[1], image.shape[2]), []).append(k)
    # images of one size are resized together: one kernel launch per step for the lot, which matters
    # on a GPU where launches, not arithmetic, bound small images; chunks bound the float copies' memory
    for members in by_size.values():
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            x = torch.stack([images[k].to(device) for k in chunk]).float()
            if processor.mode == "pad":
                x = _pad_square(x, processor.background)
            if processor.mode == "static_hd":
                big = _resize_rounded(x, 2 * c)  # (g, 3, 2c, 2c)
                g = len(chunk)
                # (g, 3, row, y, column, x) -> (g, row, column, 3, y, x): FUSION's row-major patches
                patches = big.view(g, 3, 2, c, 2, c).permute(0, 2, 4, 1, 3, 5).reshape(g, 4, 3, c, c)
                # the global view from the decoded image, as FUSION does: from the 2*crop image, content
                # near its Nyquist limit (stripes, small text) would alias into visible moire
                result = torch.cat([patches, _resize_rounded(x, c).unsqueeze(1)], dim=1)
            else:
                result = _resize_rounded(x, c).unsqueeze(1)
            views.index_copy_(0, torch.tensor(chunk, device=device), result)
    scale = torch.tensor([1 / (255 * s) for s in processor.std], dtype=torch.float32, device=device)
    shift = torch.tensor(
        [m / s for m, s in zip(processor.mean, processor.std, strict=True)],
        dtype=torch.float32,
        device=device,
    )
    views.mul_(scale.view(1, 1, 3, 1, 1)).sub_(shift.view(1, 1, 3, 1, 1))
    return out


#: Images of one size resized in one call, at most.
_CHUNK = 16


def _pad_square(x: torch.Tensor, background: tuple[int, ...]) -> torch.Tensor:
    """FUSION's `expand2square` on (g, 3, h, w) float images: centred on a square of the longer side."""
    h, w = x.shape[-2:]
    if h == w:
        return x
    side = max(h, w)
    fill = torch.tensor(background, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    canvas = fill.expand(x.shape[0], 3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, :, top : top + h, left : left + w] = x
    return canvas


def _resize_rounded(x: torch.Tensor, side: int) -> torch.Tensor:
    """Antialiased bicubic resize of float pixels to side x side, rounded to whole levels in [0, 255]."""
    if x.shape[-2:] == (side, side):
        return x
    out = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255)

"""fusion-fast: memory-mapped, Rust-built indexes over huge FUSION / LLaVA-style annotation files.

import fusion_fast
idx = fusion_fast.open("PixelProse-5500k.json")   # builds the index once, then maps it
idx[123], idx.lengths, idx.modality_lengths
"""

from typing import TYPE_CHECKING

from ._core import __version__
from .errors import (
    CorruptIndexError,
    FusionFastError,
    FusionFastIOError,
    IndexMissingError,
    MalformedJSONError,
    MixtureError,
    RecordError,
    StaleIndexError,
)

if TYPE_CHECKING:
    from .index import JsonIndex, open
    from .mixture import Mixture
    from .samplers import DistributedMixtureSampler, LengthGroupedSampler

__all__ = [
    "__version__",
    "open",
    "JsonIndex",
    "FusionFastError",
    "MalformedJSONError",
    "IndexMissingError",
    "StaleIndexError",
    "CorruptIndexError",
    "FusionFastIOError",
    "MixtureError",
    "RecordError",
    "Mixture",
    "DistributedMixtureSampler",
    "LengthGroupedSampler",
]

#: Public names imported on first use, so `import fusion_fast` (and with it the command line's
#: `--help`) imports neither torch nor numpy, polars or yaml.
_LAZY = {
    "open": "index",
    "JsonIndex": "index",
    "Mixture": "mixture",
    "DistributedMixtureSampler": "samplers",
    "LengthGroupedSampler": "samplers",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

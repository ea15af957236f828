"""FUSION's playground layout, named in one place.

FUSION keeps a training set in its repository's `playground/` folder:

    playground/train/jsons/<Name>-<N>k.json     the annotation files
    playground/train/images/<Source>/...        the images their records name
    playground/train/images/.fusion-fast/       fusion-fast's own state: prepare's completion markers,
                                                work folders and lock, and the image store `images.ffimg`

and its stage YAMLs in `scripts/train/yaml/`, whose `json_path` entries read
`../../playground/train/jsons/X.json`: relative to `scripts/train/`, the folder FUSION's launch scripts
run from, not to the YAML's own folder. `fusion-fast prepare` writes its YAML into `train/` instead, with
paths relative to that folder (`jsons/X.json`).

The state folder sits inside `images/` so that it is on the images' filesystem (work folders are renamed
into place) and moves with them; an image folder outside any playground keeps its store there too.

    pg = Playground.at("playground")
    pg.jsons, pg.images, pg.state, pg.image_store
    pg.json_path_entry(pg.jsons / "X.json", start=FusionRepo("FUSION").launch_dir)  # FUSION's spelling
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: fusion-fast's own folder inside an image folder (the same name refused as an archive member).
STATE_DIR = ".fusion-fast"
#: The image store's file name inside the state folder.
IMAGE_STORE = "images.ffimg"


def state_folder(images: str | os.PathLike[str]) -> Path:
    """`images/.fusion-fast/`: where fusion-fast keeps its state for the image folder `images`."""
    return Path(images) / STATE_DIR


def image_store_path(images: str | os.PathLike[str]) -> str:
    """`images/.fusion-fast/images.ffimg`: where the image folder `images` keeps its image store."""
    return os.path.join(images, STATE_DIR, IMAGE_STORE)


@dataclass(frozen=True)
class Playground:
    """A FUSION playground's `train/` folder: `jsons/<Name>-<N>k.json` next to `images/<Source>/...`.

    `train` is the folder holding `jsons/` and `images/`; `Playground.at(root)` is the usual
    `<root>/train/`. Paths are taken as given (not resolved): a data file linked into `jsons/` stays in
    the playground."""

    train: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Playground:
        """The playground whose root folder (FUSION's `playground/`) is `root`."""
        return cls(Path(root) / "train")

    @property
    def jsons(self) -> Path:
        return self.train / "jsons"

    @property
    def images(self) -> Path:
        return self.train / "images"

    @property
    def state(self) -> Path:
        """`images/.fusion-fast/`: prepare's markers, work folders and lock, and the image store."""
        return state_folder(self.images)

    @property
    def image_store(self) -> Path:
        return Path(image_store_path(self.images))

    def json_file(self, name: str) -> Path:
        """Where the annotation file called `name` goes."""
        return self.jsons / name

    def stage_yaml(self, stage: str) -> Path:
        """Where `fusion-fast prepare` writes the stage YAML called `stage`: `train/<stage>.yaml`."""
        return self.train / f"{stage}.yaml"

    @staticmethod
    def json_path_entry(data_file: str | os.PathLike[str], start: str | os.PathLike[str]) -> str:
        """How a stage YAML whose relative paths start at `start` names `data_file` in `json_path`:
        relative, with `/` separators whatever the OS (FUSION's YAMLs are shared across machines)."""
        return os.path.relpath(data_file, start).replace(os.sep, "/")

    @classmethod
    def of_folder(cls, folder: Path) -> Playground | None:
        """The playground `folder` is (its root, its `train/` or its `train/jsons/`), if any."""
        if (folder / "train" / "jsons").is_dir():
            return cls.at(folder)
        if (folder / "jsons").is_dir() and (folder / "images").is_dir():
            return cls(folder)
        if folder.name == "jsons" and (folder.parent / "images").is_dir():
            return cls(folder.parent)
        return None

    @classmethod
    def of_file(cls, path: Path) -> Playground | None:
        """The playground whose `jsons/` folder holds `path` (at any depth), if any."""
        for parent in path.parents:
            if parent.name == "jsons" and (parent.parent / "images").is_dir():
                return cls(parent.parent)
        return None


@dataclass(frozen=True)
class FusionRepo:
    """FUSION's repository: `playground/` next to `scripts/train/yaml/`, whose YAMLs name annotation
    files relative to `scripts/train/` (where FUSION's launch scripts run)."""

    base: Path

    #: Relative to the repository root.
    PLAYGROUND = "playground"
    LAUNCH_DIR = "scripts/train"
    YAML_DIR = "scripts/train/yaml"

    @property
    def playground(self) -> Playground:
        return Playground.at(self.base / self.PLAYGROUND)

    @property
    def launch_dir(self) -> Path:
        """`scripts/train/`: where the YAMLs' relative paths start."""
        return self.base / self.LAUNCH_DIR

    def stage_yaml(self, stage: str) -> Path:
        """`scripts/train/yaml/<stage>.yaml`."""
        return self.base / self.YAML_DIR / f"{stage}.yaml"

    def json_path_entry(self, data_file: str | os.PathLike[str]) -> str:
        """`../../playground/train/jsons/X.json` for a file in the playground's `jsons/`."""
        return Playground.json_path_entry(data_file, self.launch_dir)

    @property
    def json_path_prefix(self) -> str:
        """`../../playground/train/jsons/`: how the YAMLs begin the path of an annotation file."""
        return self.json_path_entry(self.playground.jsons) + "/"


__all__ = ["IMAGE_STORE", "STATE_DIR", "FusionRepo", "Playground", "image_store_path", "state_folder"]

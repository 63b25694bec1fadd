"""TFDS builder "image_folder": a local class-per-directory tree of JPEG/PNG files, no download.

    data.name = "image_folder", data.path = ROOT      # research/data/sources.py open_split

torchvision's `ImageFolder` convention, one directory per split under ROOT:

    ROOT/train/<class>/*.jpg|jpeg|png      ROOT/val/<class>/...     (any split names)

Each directory of ROOT holding class directories is a split of the same name ("train", "val").
The classes are the train split's directories in sorted order (label = position, as torchvision);
another split may hold fewer of them, never others. Files with other extensions are skipped, as
torchvision skips them. The images are stored as their file's bytes (re-encoded as PNG only when
PIL reads them as anything but RGB: grayscale, palette, CMYK, RGBA), so a JPEG is decoded once,
by PIL, when the pipeline reads it (imagenet2012's TFDS Image feature is read the same way), with
its own size: data.image_size crops or resizes it (research/data/augment.py).

Each distinct tree is its own builder config, `<root's name>_<16 hex digits of the SHA-256 of
the listing: relative paths, sizes and modification times>`, so adding or editing files prepares a
new dataset instead of reading a stale one. Preparing reads every file once and needs neither
network nor TensorFlow.
"""

import dataclasses
import hashlib
import io
import re
from pathlib import Path

import PIL.Image
import tensorflow_datasets as tfds

from research.errors import ConfigError

EXTENSIONS = (".jpg", ".jpeg", ".png")  # case-insensitive, as torchvision's IMG_EXTENSIONS
FILE_FORMAT = "array_record"  # TFDS's random-access format (what `tfds.data_source` reads)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS


def scan(root: str | Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split: [(file, label), ...]}) of the tree at `root`, files sorted by path.

    Raises ConfigError, in one line, for a tree that does not follow the convention.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"data.path={str(root)!r} is not a directory; give the root of an image folder "
            "(ROOT/train/<class>/*.jpg, ROOT/val/<class>/...)"
        )
    splits = {
        d.name: sorted(c for c in d.iterdir() if c.is_dir())
        for d in sorted(root.iterdir())
        if d.is_dir() and any(c.is_dir() for c in d.iterdir())
    }
    if "train" not in splits:
        raise ConfigError(
            f"data.path={str(root)!r} has no train/<class>/ directories; an image folder is "
            "ROOT/train/<class>/*.jpg (and ROOT/val/<class>/...), as torchvision's ImageFolder"
        )
    classes = [c.name for c in splits["train"]]
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, class_dirs in splits.items():
        unknown = sorted({c.name for c in class_dirs} - set(classes))
        if unknown:
            raise ConfigError(
                f"data.path={str(root)!r}: {split}/ has classes that train/ lacks: {unknown[:5]}"
            )
        files[split] = [
            (f, classes.index(c.name))
            for c in class_dirs
            for f in sorted(c.iterdir())
            if _is_image(f)
        ]
        if not files[split]:
            raise ConfigError(
                f"data.path={str(root)!r}: {split}/ holds no {'/'.join(EXTENSIONS)} files"
            )
    return classes, files


def listing_digest(files: dict[str, list[tuple[Path, int]]], root: Path) -> str:
    """SHA-256 over every file's split, relative path, size and modification time."""
    digest = hashlib.sha256()
    for split in sorted(files):
        for path, _ in files[split]:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def rgb_bytes(path: Path) -> bytes:
    """The file's bytes if PIL reads it as RGB; else the image converted to RGB, as PNG."""
    data = path.read_bytes()
    with PIL.Image.open(io.BytesIO(data)) as image:
        if image.mode == "RGB":
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
        return out.getvalue()


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """One tree: its `root`, and the `digest` of its listing to check it is unchanged."""

    root: str = ""
    digest: str = ""


class ImageFolder(tfds.core.GeneratorBasedBuilder):
    """A local class-per-directory tree of images, one split per top-level directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so no checksums file to look for (research/data/digits.py).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        classes, _ = scan(self.builder_config.root)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=classes),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Local files: nothing to download.
        config = self.builder_config
        root = Path(config.root)
        _, files = scan(root)
        if listing_digest(files, root) != config.digest:
            raise RuntimeError(f"{root} changed while being prepared; run again")
        return {split: self._generate_examples(root, items) for split, items in files.items()}

    def _generate_examples(self, root: Path, items: list[tuple[Path, int]]):
        for path, label in items:  # keyed by the relative path: traceable to its file
            yield str(path.relative_to(root)), {"image": rgb_bytes(path), "label": label}


def builder(root: str | Path, data_dir: str | None = None) -> ImageFolder:
    """The builder for the current tree at `root`, prepared (a no-op once it is)."""
    root = Path(root).resolve()
    _, files = scan(root)
    digest = listing_digest(files, root)
    stem = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_") or "images"
    config = ImageFolderConfig(
        name=f"{stem}_{digest[:16]}",
        description=f"{root}, listing sha256 {digest}",
        root=str(root),
        digest=digest,
    )
    folder = ImageFolder(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    try:
        folder.download_and_prepare()
    except Exception:
        # Processes preparing into one data_dir race to rename their temporary directories; the
        # loser's rename fails, but the winner's dataset is there to read.
        folder = ImageFolder(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
        if not folder.is_prepared():
            raise
    return folder

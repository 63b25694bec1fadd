"""The "image_folder" builder (research/data/image_folder.py) on a tree of images the test writes:
classes, counts, decoding, rejection of malformed trees, and a smoke training run reading it."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import PIL.Image
import pytest

from research import config as cfg
from research import data, train
from research.data import image_folder, sources
from research.errors import ConfigError

CLASSES = ("cat", "dog", "fish")
PER_CLASS = {"train": 12, "val": 4}  # 36 + 12 images


def write_tree(root: Path) -> Path:
    """ROOT/{train,val}/<class>/ of random images of varying size: JPEG, PNG, grayscale PNG,
    plus a text file a reader must skip."""
    rng = np.random.default_rng(0)
    for split, count in PER_CLASS.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(24, 64, size=2)
                image = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                if i % 4 == 0:
                    image.convert("L").save(folder / f"{i}.png")
                elif i % 4 == 1:
                    image.save(folder / f"{i}.PNG")
                else:
                    image.save(folder / f"{i}.jpg", quality=90)
    (root / "train" / "cat" / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("images") / "pets")


def folder_config(root: Path, data_dir: Path) -> ml_collections.ConfigDict:
    c = cfg.defaults().data
    c.name, c.path, c.data_dir = "image_folder", str(root), str(data_dir)
    c.train_split, c.eval_split, c.test_split = "train", "val", "val"
    return c


def test_classes_counts_and_images(tree, tmp_path):
    config = folder_config(tree, tmp_path)
    info = data.info(ml_collections.ConfigDict({**config.to_dict(), "image_size": 32}))
    assert info.class_names == ["cat", "dog", "fish"] and info.num_classes == 3
    assert info.num_train == 36 and info.input_shape == (32, 32, 3)

    val = sources.open_split(config, "val")
    assert len(val) == 12
    examples = [val[i] for i in range(len(val))]
    assert sorted(int(e["label"]) for e in examples) == [0] * 4 + [1] * 4 + [2] * 4
    # Every image decodes to RGB uint8 at its own size; grayscale PNGs become three channels.
    assert all(e["image"].dtype == np.uint8 and e["image"].shape[2] == 3 for e in examples)
    assert len({e["image"].shape for e in examples}) > 1

    # The file's pixels, exactly: PNGs are lossless, and a JPEG is stored as its own bytes.
    png = np.asarray(PIL.Image.open(tree / "val" / "dog" / "1.PNG"))
    assert any(e["image"].shape == png.shape and np.array_equal(e["image"], png) for e in examples)


def test_the_same_tree_is_prepared_once_and_an_edited_one_again(tree, tmp_path):
    first = image_folder.builder(tree, str(tmp_path))
    again = image_folder.builder(tree, str(tmp_path))
    assert again.builder_config.name == first.builder_config.name
    assert again.builder_config.name.startswith("pets_") and len(again.builder_config.name) == 21
    copy = write_tree(tmp_path / "copy" / "pets")
    (copy / "val" / "fish" / "0.png").unlink()
    edited = image_folder.builder(copy, str(tmp_path))
    assert edited.builder_config.name != first.builder_config.name
    assert edited.info.splits["val"].num_examples == 11


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"val/cat/a.png": 1}, "has no train/<class>/ directories"),
        (
            {"train/cat/a.png": 1, "val/cow/b.png": 1},
            "val/ has classes that train/ lacks: \\['cow'\\]",
        ),
        ({"train/cat/a.txt": 1}, "train/ holds no .jpg/.jpeg/.png files"),
    ],
)
def test_malformed_trees_are_one_line_config_errors(tmp_path, layout, message):
    for name in layout:
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.new("RGB", (4, 4)).save(path, format="PNG")
    with pytest.raises(ConfigError, match=message):
        image_folder.builder(tmp_path / "root", str(tmp_path / "tfds"))


def test_missing_root_and_missing_path_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        image_folder.builder(tmp_path / "nowhere")
    config = folder_config(tmp_path, tmp_path)
    config.path = ""
    with pytest.raises(ConfigError, match="set --config.data.path=ROOT"):
        sources.open_split(config, "train")


def test_imagenet_resnet_smoke_run_reads_the_folder(tree, tmp_path):
    """The experiment's `folder=` variant trains on the tree (not mock data) and scores val."""
    overrides = {
        "model.num_classes": "3",
        "data.data_dir": str(tmp_path / "tfds"),
        "data.image_size": "32",
        "train.batch_size": "8",
        "train.eval_batch_size": "8",
    }
    config = cfg.build_config(f"experiments/imagenet_resnet.py:smoke,folder={tree}", overrides)
    assert config.data.name == "image_folder" and not config.data.mock
    result = train.run(config, tmp_path / "run")
    assert result["step"] == 12
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    matrix = np.array(on_disk["details"]["test"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 12  # every val image scored once
    assert matrix.sum(axis=1).tolist() == [4, 4, 4]

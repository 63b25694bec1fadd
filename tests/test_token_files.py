"""Token files (research/data/token_files.py): nanoGPT's train.bin / val.bin read as text data.
Windows are slices of the files, training batches are a function of (seed, step) that resumes
bitwise and splits over processes, evaluation covers every window once; bad directories are one
line."""

import json

import numpy as np
import pytest

from research import config as cfg
from research import data
from research.data import text, token_files
from research.errors import ConfigError, DatasetUnavailable

SEQ_LEN = 8
TRAIN, VAL = 1_000, 203  # VAL: 25 whole windows of 8 (+1 for the last target), 2 tokens left


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """train.bin and val.bin as nanoGPT's prepare.py writes them: raw uint16 ids."""
    root = tmp_path_factory.mktemp("owt")
    rng = np.random.default_rng(0)
    tokens = {"train": rng.integers(50257, size=TRAIN), "val": rng.integers(50257, size=VAL)}
    for split, ids in tokens.items():
        ids.astype(np.uint16).tofile(root / f"{split}.bin")
    return root, tokens


def token_config(path, **overrides):
    c = cfg.defaults().data
    c.update(
        dict(
            kind="text",
            name="token_files",
            path=str(path),
            tokenizer="gpt2",
            seq_len=SEQ_LEN,
            eval_split="val",
            test_split="val",
        )
        | overrides
    )
    return c


def batches(c, count, *, seed=0, process_index=0, process_count=1, batch_size=4):
    it = data.train_iterator(
        c,
        global_batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    return [next(it) for _ in range(count)], it


def test_info_and_splits_are_the_files(directory):
    root, tokens = directory
    c = token_config(root)
    info = data.info(c)
    assert info.num_classes == 50257 and info.input_shape == (SEQ_LEN,)
    assert info.num_train == TRAIN
    assert json.loads(info.workdir_files["tokenizer.json"]) == {"kind": "gpt2", "encoding": "gpt2"}
    val = text.split_tokens(c, "val")
    assert isinstance(val, np.memmap) and val.dtype == np.uint16  # Mapped, never loaded.
    np.testing.assert_array_equal(val, tokens["val"])


def test_training_windows_are_slices_of_the_file(directory):
    root, tokens = directory
    (batch,), _ = batches(token_config(root), 1, batch_size=16)
    train = tokens["train"]
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (16, SEQ_LEN)
    for x, y in zip(batch["inputs"], batch["targets"]):
        starts = [i for i in range(TRAIN - SEQ_LEN) if (train[i : i + SEQ_LEN] == x).all()]
        assert starts, "a window that is not in the file"
        i = starts[0]
        np.testing.assert_array_equal(y, train[i + 1 : i + SEQ_LEN + 1])  # x shifted by one


def test_batches_are_a_function_of_seed_and_step_and_resume_bitwise(directory):
    root, _ = directory
    c = token_config(root)
    first, _ = batches(c, 5)
    again, _ = batches(c, 5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    other, _ = batches(c, 1, seed=1)
    assert not np.array_equal(other[0]["inputs"], first[0]["inputs"])
    # Resume after 2 batches: a fresh iterator with the state gives batches 2, 3, 4.
    _, it = batches(c, 2)
    state = it.get_state()
    resumed = data.train_iterator(c, global_batch_size=4, seed=0, process_index=0, process_count=1)
    resumed.set_state(state)
    for k in range(2, 5):
        np.testing.assert_array_equal(next(resumed)["inputs"], first[k]["inputs"])
    # Two processes each read half of every global batch; together they read all of it.
    halves = [batches(c, 3, process_index=p, process_count=2)[0] for p in (0, 1)]
    for k in range(3):
        together = np.concatenate([halves[0][k]["inputs"], halves[1][k]["inputs"]])
        assert sorted(map(tuple, together)) == sorted(map(tuple, first[k]["inputs"]))


def test_evaluation_scores_every_window_once(directory):
    root, tokens = directory
    evals = list(
        data.eval_batches(
            token_config(root), "val", global_batch_size=8, process_index=0, process_count=1
        )
    )
    inputs = np.concatenate([b["inputs"][b["mask"]] for b in evals])
    targets = np.concatenate([b["targets"][b["mask"]] for b in evals])
    windows = (VAL - 1) // SEQ_LEN
    assert len(inputs) == windows == 25
    np.testing.assert_array_equal(inputs.ravel(), tokens["val"][: windows * SEQ_LEN])
    np.testing.assert_array_equal(targets.ravel(), tokens["val"][1 : windows * SEQ_LEN + 1])


def test_mock_is_generated_token_files():
    c = token_config("", mock=True)
    root = token_files.directory(c)
    assert sorted(p.name for p in root.iterdir()) == ["train.bin", "val.bin"]
    assert data.info(c).num_train == token_files.MOCK_TOKENS["train"]
    assert text.split_tokens(c, "val").max() < 50257
    assert data.available_offline(c) and not data.available_offline(token_config(""))


def test_bad_directories_are_one_line(directory, tmp_path):
    root, _ = directory
    with pytest.raises(ConfigError, match="set --config.data.path=DIR"):
        data.info(token_config(""))
    with pytest.raises(
        DatasetUnavailable, match=r"does not exist \(splits in .*\['train', 'val'\]"
    ):
        data.info(token_config(root, train_split="validation"))
    (tmp_path / "train.bin").write_bytes(b"\x00\x01\x02")  # 3 bytes: not uint16 ids
    with pytest.raises(ConfigError, match="not a whole number of uint16 tokens"):
        data.info(token_config(tmp_path))
    with pytest.raises(ConfigError, match="token files hold ids of gpt2"):
        data.info(token_config(root, tokenizer="char"))


def test_openwebtext_smoke_runs_on_generated_token_files(tmp_path):
    """The GPT-2 recipe's smoke variant: GPT-2's vocabulary over generated ids, no download."""
    from research import train

    c = cfg.build_config("experiments/openwebtext_gpt2.py:smoke", {})
    assert c.data.name == "token_files" and c.data.mock and c.data.tokenizer == "gpt2"
    result = train.run(c, tmp_path)
    assert result["step"] == 12
    # Ids uniform over 50,257: a model that has learnt nothing scores about ln(50257) = 10.82.
    assert abs(result["metrics"]["test/loss"] - np.log(50257)) < 0.1
    assert (tmp_path / "tokenizer.json").read_text() == json.dumps(
        token_files.VOCABULARIES["gpt2"][1]
    )

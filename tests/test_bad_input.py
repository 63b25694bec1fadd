"""Bad input never damages anything: every field of every experiment, given a wrong-typed or an
out-of-range value, is refused in one line with exit status 2, before the workdir is touched.

Launches run in this process (`launch.main`), so a traceback fails the test as an exception, and
the few hundred launches take seconds rather than minutes.
"""

import math
from pathlib import Path

import pytest

import launch
from research import config as cfg
from research import data, models, train
from research import workdir as workdirs
from tests.helpers import snapshot

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_"))

# Values each kind of field must refuse (research/config.py `rules`): a wrong type, out of range.
BAD_BY_RULE = {
    "positive_int": ("abc", "0"),
    "count": ("abc", "-1"),
    "seed": ("1.5", "-1"),
    "positive": ("abc", "0"),
    "non_negative": ("abc", "-1"),
    "fraction": ("abc", "1.5"),
    "finite": ("abc", "nan"),
    "flag": ("maybe",),
    "choice": ("no_such_choice",),
    "split": ("", "train["),  # Mock data has no split names; prepared data: see below.
    "positive_ints": ("(x", "(-1,)"),
    "numbers": ("(x", "('a',)"),
    "positive_numbers": ("(x", "(0.0,)"),
    "regex": ("(",),
    "lr_multipliers": ("(x", "(('(', 2.0),)", "(('^a', 0.0),)", "('^a', 2.0)"),
    "text_features": ("()", "('a', 'b', 'c')"),
}
# Free-text fields, and what each must refuse (None: any text is valid there).
BAD_TEXT = {
    "data.name": ("no_such_dataset",),
    "data.data_dir": ("{a_file}",),
    "data.path": ("/no/such/file.txt",),
    "data.target_path": ("/no/such/file.txt",),
    "data.source_lang": ("xx",),
    "data.target_lang": ("xx",),
    "data.tokenizer_model": ("/no/such/file.model",),
    "init.source": ("/no/such/run",),
    "parallel.mesh": ("model=2", "data=x", "data=-1,fsdp=-1"),
    "train.best_metric": ("eval/no_such_metric", "no_such_split/loss"),
    "expected.metric": ("test/no_such_metric", "accuracy"),
    "expected.source": None,
    "expected.curve.metric": ("eval/no_such_metric", "test/loss"),
    "expected.curve.source": None,
}


def bad_values(key: str, default) -> tuple[str, ...]:
    """Command-line texts that `key` (whose value is `default`) must refuse."""
    if key.startswith("model.") and key != "model.name":  # The model's own fields, by type.
        if isinstance(default, bool):
            return ("maybe",)
        if isinstance(default, int):
            return ("abc", "-1")
        if isinstance(default, float):
            return ("abc", "-1.0")
        if isinstance(default, str):
            return ("no_such_value",)
        if isinstance(default, tuple | list):
            return ("(x", "(-1,)")
        return ()
    rule = cfg.rules()[key]
    if rule.kind == "text":
        return BAD_TEXT[key] or ()
    return BAD_BY_RULE[rule.kind]


def walked_fields(path: Path) -> dict:
    """Every field of defaults() for the default experiment; for the others, the fields their
    recipe sets (differs from the defaults) and every model field."""
    recipe = cfg.flatten(cfg.load_experiment(str(path)))
    declared = cfg.flatten(cfg.defaults())
    if path.name == "digits_cnn.py":
        keys = set(declared) | {k for k in recipe if k.startswith("model.")}
    else:
        keys = {k for k in recipe if k.startswith("model.") or recipe[k] != declared.get(k)}
    return {k: recipe[k] for k in sorted(keys) if k != "experiment"}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A finished smoke run of the default experiment, to launch bad values against."""
    workdir = tmp_path_factory.mktemp("existing") / "run"
    train.run(cfg.build_config("experiments/digits_cnn.py:smoke", {}), workdir)
    return workdir


def refused(argv: list[str], capsys) -> str:
    """Launch in this process; return the error line, or a description of what went wrong."""
    status = launch.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if status != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"FAILED: exit {status}, stderr {err[-300:]!r}"
    return lines[0]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_field_refuses_wrong_types_and_out_of_range_values(
    path, existing_run, tmp_path, capsys
):
    spec = f"experiments/{path.name}:smoke"
    # The variant walked must itself be fine, so that each refusal is the bad field's doing.
    baseline = cfg.build_config(spec, {})
    assert data.available_offline(baseline.data) or path.name == "digits_cnn.py"
    train.prepare(baseline, tmp_path / "baseline")
    assert not (tmp_path / "baseline").exists()
    capsys.readouterr()  # A dataset prepared on first use shows TFDS progress bars: not ours.

    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    before = snapshot(existing_run)
    failures, checked = [], 0
    for key, default in walked_fields(path).items():
        for value in bad_values(key, default):
            value = value.replace("{a_file}", str(a_file))
            fresh = tmp_path / f"fresh_{checked}"
            targets = [fresh] + ([existing_run] if path.name == "digits_cnn.py" else [])
            for workdir in targets:
                line = refused(
                    [f"--config={spec}", f"--workdir={workdir}", f"--config.{key}={value}"],
                    capsys,
                )
                checked += 1
                if line.startswith("FAILED"):
                    failures.append(f"--config.{key}={value!r} on {workdir.name}: {line}")
            if fresh.exists():
                failures.append(f"--config.{key}={value!r} created {fresh}")
    assert not failures, "\n".join(failures)
    assert checked >= 20 if path.name != "digits_cnn.py" else checked >= 150
    assert snapshot(existing_run) == before  # Byte for byte, every file of the existing run.


def test_every_field_has_a_rule_and_every_rule_kind_a_bad_value():
    rules = cfg.rules()
    assert set(rules) == set(cfg.flatten(cfg.defaults()))
    for key, rule in rules.items():
        assert rule.kind in BAD_BY_RULE or key in BAD_TEXT, key
    for name in models.MODELS:  # Model fields are walked by their type; all types are covered.
        for value in models.arguments(name).values():
            assert isinstance(value, bool | int | float | str | tuple) or value is None


def test_code_reads_only_declared_fields():
    """No `.get(field, default)` on a config outside research/config.py: a second default is how
    defaults come to disagree. Attribute reads of a locked config fail for undeclared fields."""
    import ast

    declared = {k.rpartition(".")[2] for k in cfg.flatten(cfg.defaults())}
    declared |= {k for name in models.MODELS for k in models.arguments(name)}
    offenders = []
    for source in (ROOT / "research").rglob("*.py"):
        if source.name == "config.py":
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in declared
            ):
                offenders.append(
                    f"{source.relative_to(ROOT)}:{node.lineno} .get({node.args[0].value!r}, ...)"
                )
    assert not offenders, offenders
    with pytest.raises(AttributeError):
        cfg.build_config("experiments/digits_cnn.py:smoke", {}).train.stpes  # noqa: B018


def test_a_typo_in_an_experiment_file_names_the_field_and_the_nearest_one(tmp_path, capsys):
    experiment = tmp_path / "typo.py"
    experiment.write_text(
        (ROOT / "experiments" / "digits_cnn.py")
        .read_text()
        .replace("    c.train.steps = 800\n", "    c.train.steps = 800\n    c.train.stpes = 3\n")
    )
    line = refused([f"--config={experiment}", f"--workdir={tmp_path / 'run'}"], capsys)
    assert "train.stpes" in line and "did you mean train.steps?" in line
    assert not (tmp_path / "run").exists()
    experiment.write_text(
        (ROOT / "experiments" / "digits_cnn.py").read_text().replace("hidden=128", "hiden=128")
    )
    line = refused([f"--config={experiment}", f"--workdir={tmp_path / 'run'}"], capsys)
    assert "model.hiden" in line and "did you mean hidden?" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config=experiments/cifar10_resnet.py:depth=7"], "depth must be 6n+2"),
        (["--config=experiments/digits_cnn.py:smoke", "--config.task=regression"], "task"),
        (["--config=experiments/digits_cnn.py:smoke", "--config.train.seed=-1"], "train.seed"),
        (
            ["--config=experiments/shakespeare_char_gpt.py:smoke", "--config.model.norm=batch"],
            "norm",
        ),
        (
            ["--config=experiments/digits_cnn.py:smoke", "--config.train.steps_per_call=0"],
            "train.steps_per_call",
        ),
        (
            ["--config=experiments/digits_cnn.py:smoke", "--config.train.eval_batch_size=0"],
            "train.eval_batch_size",
        ),
        (
            [
                "--config=experiments/digits_cnn.py:smoke",
                "--config.train.best_metric=eval/nonexistent",
            ],
            "train.best_metric",
        ),
        (
            ["--config=experiments/shakespeare_char_gpt.py:smoke", "--config.data.seq_len=100000"],
            "too few",
        ),
        (
            ["--config=experiments/shakespeare_char_gpt.py:smoke", "--config.data.seq_len=64"],
            "exceeds block_size",
        ),
        (["--config=experiments/digits_cnn.py:smoke", "--config.parallel.strategy=foo"], "foo"),
        (["--config=experiments/digits_cnn.py:smoke", "--config.parallel.fsdp=3"], "fsdp"),
        (["--config=experiments/digits_cnn.py:smoke", "--stop_after_step=0"], "stop_after_step"),
        (["--config=experiments/digits_cnn.py:smoke", "--stop_after_step=-1"], "stop_after_step"),
        (["--config=experiments/digits_cnn.py:smoke", "--stop_after_step=x"], "stop_after_step"),
        (["--config=experiments/digits_cnn.py:smoke", "--no_such_flag"], "no_such_flag"),
        (["--config=experiments/digits_cnn.py:smoke", "--config.data.name=cifar100x"], "cifar100"),
        (
            ["--config=experiments/digits_cnn.py:smoke", "--config.data.eval_split=validation"],
            "Unknown split 'validation'",
        ),
    ],
)
def test_mistakes_are_one_line_before_anything_is_written(argv, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    line = refused([*argv, f"--workdir={workdir}"], capsys)
    assert message in line, line
    assert not workdir.exists()


def test_workdir_that_is_empty_a_file_or_unwritable_is_refused(tmp_path, capsys, monkeypatch):
    spec = f"--config={ROOT / 'experiments' / 'digits_cnn.py'}:smoke"
    monkeypatch.chdir(tmp_path)
    assert "--workdir is empty" in refused([spec, "--workdir="], capsys)
    assert "--workdir is empty" in refused([spec, "--workdir= "], capsys)
    assert not list(tmp_path.iterdir())  # Nothing trained into the current directory.
    (tmp_path / "a_file").write_text("x")
    assert "is a file" in refused([spec, f"--workdir={tmp_path / 'a_file'}"], capsys)
    assert (tmp_path / "a_file").read_text() == "x"
    # /sys refuses new files even to root: the nearest thing to a read-only filesystem here.
    assert "cannot be written" in refused([spec, "--workdir=/sys/research_test_run"], capsys)


@pytest.mark.parametrize(
    ("workdir", "message"),
    [
        ("foo://x/run", "unknown scheme foo://; give a local path or a bucket (gs://bucket/dir)"),
        ("s3://bucket/run", "s3:// workdirs are not supported"),
        ("gs://bucket/run", "need gcsfs and google-cloud-storage, not installed here; pip install"),
    ],
)
def test_a_workdir_scheme_that_cannot_work_here_is_refused(workdir, message, tmp_path, capsys):
    """Object storage: an unknown scheme, or one whose packages are missing (this venv has no
    gcsfs), in one line before anything runs (tests/test_workdir_bucket.py runs a fake bucket)."""
    if workdir.startswith("gs://") and all(
        workdirs._importable(m) for m, _ in workdirs.BUCKETS["gs"]
    ):
        pytest.skip("gcsfs and google-cloud-storage are installed here")
    spec = f"--config={ROOT / 'experiments' / 'digits_cnn.py'}:smoke"
    assert message in refused([spec, f"--workdir={workdir}"], capsys)
    assert message in refused(["lr_find", spec, f"--workdir={workdir}"], capsys)


def test_eval_batch_must_split_over_the_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(train.jax, "device_count", lambda: 8)
    config = cfg.build_config(
        "experiments/digits_cnn.py:smoke", {"train.batch_size": "16", "train.eval_batch_size": "12"}
    )
    with pytest.raises(
        cfg.ConfigError, match="eval_batch_size=12 does not split over 8 batch shards"
    ):
        train.prepare(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sample_flags_are_checked(tmp_path, capsys):
    line = refused(["sample", f"--workdir={tmp_path}", "--top_k=-3"], capsys)
    assert line.startswith("error: ")  # No run there: one line either way; now with a run:
    from research import sample

    with pytest.raises(cfg.ConfigError, match="--top_k=-3"):
        sample.sample(tmp_path, top_k=-3)


def test_unavailable_dataset_fails_in_seconds_in_one_line(tmp_path, capsys):
    """Offline, without TensorFlow: no download retries, no urllib3 warnings, one line."""
    import time

    start = time.monotonic()
    line = refused(
        [
            "--config=experiments/cifar10_resnet20.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
        ],
        capsys,
    )
    assert time.monotonic() - start < 30
    assert "not prepared" in line and "tfds build cifar10" in line and "mock=true" in line
    assert not (tmp_path / "run").exists()


def test_nan_is_not_a_number_any_field_takes():
    assert all(not rule.ok(math.nan) for rule in cfg.rules().values() if rule.kind != "text")

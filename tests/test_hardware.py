"""Choosing by the processor: research/hardware.py detection and `model.dtype="auto"`."""

import json

import pytest

from research import config as cfg
from research import hardware, models, train

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile
"""
EPYC_AVX2 = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 fma\n"


def fake_processor(monkeypatch, backend="cpu", flags=()):
    """Detection as on a machine with this backend and these /proc/cpuinfo flags."""
    text = f"model name\t: Fake CPU\nflags\t\t: sse2 {' '.join(flags)}\n"
    monkeypatch.setattr(hardware, "backend", lambda: backend)
    monkeypatch.setattr(hardware, "cpu", lambda: hardware.parse_cpuinfo(text))


def test_parse_cpuinfo_reads_the_model_and_the_features_that_set_matmul_speed():
    assert hardware.parse_cpuinfo(XEON_AMX) == {
        "model": "Intel(R) Xeon(R) Processor",
        "features": {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True},
    }
    assert hardware.parse_cpuinfo(EPYC_AVX2)["features"] == {
        "avx2": True,
        "avx512f": False,
        "avx512_bf16": False,
        "amx_bf16": False,
    }
    fallback = hardware.parse_cpuinfo("")  # No /proc/cpuinfo (macOS, Windows): features unknown.
    assert fallback["model"] and not any(fallback["features"].values())


@pytest.mark.parametrize(
    ("backend", "flags", "kind", "dtype"),
    [
        ("cpu", ("avx2",), "cpu", "float32"),  # AVX2-only (the Zen 4 under KVM)
        ("cpu", ("avx2", "avx512f"), "cpu", "float32"),  # AVX-512 without BF16
        ("cpu", ("avx2", "avx512f", "avx512_bf16"), "cpu_bf16", "bfloat16_matmul"),
        ("cpu", ("avx2", "amx_bf16"), "cpu_bf16", "bfloat16_matmul"),
        ("cpu", (), "cpu", "float32"),  # Features unknown: float32 is right everywhere.
        ("gpu", (), "gpu", "bfloat16"),
        ("tpu", (), "tpu", "bfloat16"),
    ],
)
def test_auto_dtype_resolves_by_the_processor(monkeypatch, backend, flags, kind, dtype):
    fake_processor(monkeypatch, backend, flags)
    assert hardware.kind() == kind
    for name in models.AUTO_DTYPE_MODELS:
        model_config = {"name": name, **models.SMOKE_SIZES[name], "dtype": "auto"}
        assert models.dtype(model_config) == dtype
        assert models.build(model_config).dtype == dtype  # Built as resolved.
    assert models.dtype({"name": "gpt", "dtype": "float32"}) == "float32"  # Not auto: as given.
    assert models.dtype({"name": "gpt"}) is None  # No dtype field set.


def test_auto_dtype_names_only_precisions_the_models_know():
    from research.models import gpt

    assert set(gpt.AUTO_DTYPES.values()) <= set(gpt.DTYPES)
    assert set(gpt.AUTO_DTYPES) == {"cpu", "cpu_bf16", "gpu", "tpu"}


@pytest.mark.parametrize(
    ("experiment", "dtype", "message"),
    [
        ("shakespeare_char_gpt.py:smoke", "float8", "GPT dtype"),  # Still refused, one line.
        ("digits_cnn.py:smoke", "auto", "model.dtype='auto' is for gpt, transformer, vit, bert"),
    ],
)
def test_refused_dtypes_are_one_line_config_errors(experiment, dtype, message):
    with pytest.raises(cfg.ConfigError, match=message) as error:
        cfg.build_config(f"experiments/{experiment}", {"model.dtype": dtype})
    assert "\n" not in str(error.value)


def test_auto_on_an_unknown_backend_is_a_one_line_error(monkeypatch):
    fake_processor(monkeypatch, backend="metal")
    with pytest.raises(cfg.ConfigError, match="no choice for processor 'metal'") as error:
        cfg.build_config("experiments/shakespeare_char_gpt.py:smoke", {"model.dtype": "auto"})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("flags", "dtype"), [(("avx2",), "float32"), (("avx2", "amx_bf16"), "bfloat16_matmul")]
)
def test_the_run_says_what_auto_resolved_to(tmp_path, monkeypatch, capsys, flags, dtype):
    """First console line and provenance.json: the resolved dtype; config.json keeps "auto"."""
    fake_processor(monkeypatch, "cpu", flags)
    config = cfg.build_config(
        "experiments/shakespeare_char_gpt.py:smoke",
        {"model.dtype": "auto", "expected.metric": ""},
    )
    train.run(config, tmp_path)
    first = capsys.readouterr().out.splitlines()[0]
    kind = hardware.kind()
    assert (
        first.startswith("shakespeare_char_gpt:smoke: ")
        and f"dtype {dtype} (auto, {kind})" in first
    )
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["model_dtype"] == dtype
    assert provenance["processor"]["kind"] == kind
    assert provenance["processor"]["cpu"]["features"]["amx_bf16"] == ("amx_bf16" in flags)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["dtype"] == "auto"

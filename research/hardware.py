"""The processor this process computes on: the JAX backend, the CPU's model and its ISA features.

Speed settings that depend on the processor are named "auto" in a config and resolve through a
table keyed by `kind()`, next to the code they choose (e.g. research/models/gpt.py AUTO_DTYPES).
The kinds differ in what a bfloat16 dot product costs: GPUs and TPUs and CPUs with AVX512-BF16 or
AMX-BF16 multiply bfloat16 natively; an AVX2-only CPU converts its operands to float32 first
(bench/NOTES.md, "CPU kinds").
"""

import functools
import platform
from pathlib import Path

import jax

# ISA features that decide XLA:CPU's matmul speed (bfloat16 dots need avx512_bf16 or amx_bf16),
# by their /proc/cpuinfo names.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu() -> dict:
    """{"model": name, "features": {feature: present}} for CPU_FEATURES.

    From /proc/cpuinfo (Linux, x86 "flags"); elsewhere the model is platform.processor() and the
    features are unknown (all False: the float32 choices, which are right on any CPU).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> dict:
    """cpu()'s record from the text of /proc/cpuinfo ("" when there is none)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # The first CPU's; all are alike.
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    return {"model": model, "features": {name: name in flags for name in CPU_FEATURES}}


def backend() -> str:
    """JAX's default backend: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def kind() -> str:
    """The backend ("gpu", "tpu", ...), or on a CPU "cpu_bf16" (native bf16 dots) or "cpu"."""
    name = backend()
    if name != "cpu":
        return name
    features = cpu()["features"]
    return "cpu_bf16" if any(features[f] for f in NATIVE_BF16) else "cpu"


def describe() -> dict:
    """What provenance and benchmarks record: backend, kind, CPU model and features."""
    return {"backend": backend(), "kind": kind(), "cpu": cpu()}


def summary() -> str:
    """One line: 'Intel(R) Xeon(R) ... (avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 no)'."""
    info = cpu()
    isa = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in info["features"].items())
    return f"{info['model']} ({isa})"

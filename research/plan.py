"""`launch.py plan`: what a run needs, before it runs: parameters, FLOPs, memory per device, which
devices it fits and how many of them, and how long it takes at a stated utilisation.

    python launch.py plan --config=experiments/openwebtext_gpt2.py [--mfu=0.4] [--time_steps=5]

    plan = research.plan.make(config)      # compiles the step from shapes; allocates nothing
    print(plan.describe(mfu=0.4))
    measured = research.plan.measure(plan, 5)  # this machine, for real: 5 timed steps

Everything comes from the real training step, compiled as the trainer compiles it
(research/steps.py `compile_train_step`, on the mesh research/parallel.py makes of this machine's
devices) but from shapes: the state and the batch are `jax.ShapeDtypeStruct`s with their
shardings, `jax.jit(...).lower(...).compile()` builds the program, and nothing is allocated, so
the plan of a model far larger than this machine still runs here.

- Parameters: counted from the abstract state, as the trainer counts them.
- FLOPs: XLA's cost analysis of the compiled step (one device's program under SPMD, times the
  devices), per update and per token (per example for data that is not a token sequence). For
  GPT they are set beside nanoGPT's estimate_mfu count (PaLM, Chowdhery et al. 2022, appendix B):
  6N + 12 L D T per token, N the parameters without the position table. That estimate is the
  model FLOPs that MFU is defined by; other models use XLA's count.
- Memory per device: XLA's buffer assignment of the compiled step (`memory_analysis`): its
  arguments (the state as sharded, the batch), its temporaries, and outputs not aliased to the
  donated state. The state is split into parameters, optimizer state, EMA and the rest from its
  shapes and shardings; "activations" are what the backward pass keeps of one micro-batch (the
  residuals of `jax.vjp` of the loss, its inputs excluded); "other temporaries" are the rest of
  XLA's temporaries (gradients, optimizer scratch, every micro-batch XLA keeps alive at once).
  Buffer assignment is the backend's own: run on a CPU it is XLA:CPU's, which fuses and schedules
  differently from XLA:GPU (and has no fused attention kernel); run plan on the target machine
  for its figure there (bench/accelerator.py compares it with a GPU's measured peak).
- Per device kind (DEVICES: memory and dense bfloat16 peak from the vendors' datasheets): data
  parallelism over n devices, each holding the state (sharded over "fsdp" and "tensor" as parallel.mesh
  says) and batch / (data x fsdp) rows. Temporaries grow linearly with the rows a device holds: the step is compiled a
  second time at another batch, and the line through the two gives the temporaries for any n. A
  kind fits when the total is within what JAX may use of its memory (GPUs: 75%, JAX's default
  preallocation; TPUs: all of it). "devices" is the fewest n that fits and splits every
  micro-batch evenly; step time = model FLOPs per update / (n x peak x mfu), run time =
  train.steps x step time (evaluations and checkpoints not counted).
- `measure`: this machine, for real. The state is allocated as the trainer allocates it, the
  compiled step runs a few times on a batch of zeros, and the median step time, the FLOP/s (MFU
  where this device's peak is known), the bytes of the state and batch it holds and the peak
  the allocator reports in use (GPU and TPU `memory_stats`; a CPU reports none) are set beside
  the plan's.

The data gives the batch's shapes: the configured data when it is readable here, else
`data.mock` data of the real shapes (say, before the token files are downloaded).
"""

import dataclasses
import math
import re
import statistics
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from research import data, parallel, sharding, steps
from research.errors import ConfigError, DatasetUnavailable

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Device:
    """An accelerator kind: its memory and its dense bfloat16 matmul peak (datasheet)."""

    name: str
    memory_gib: float  # The datasheet's "GB" of HBM/GDDR, which are GiB (nvidia-smi's MiB / 1024).
    peak_tflops: float  # Dense (no 2:4 sparsity) bfloat16 tensor-core / MXU peak, TFLOP/s.
    platform: str  # "gpu" or "tpu"
    pattern: str  # A regex that finds it in jax's device_kind ("NVIDIA A100-SXM4-80GB").
    source: str


# NVIDIA's datasheets give tensor-core rates "with sparsity" (*); the dense rate is half.
DEVICES = (
    Device("A100 40GB", 40, 312, "gpu", r"A100.*40GB", "NVIDIA A100 datasheet: BF16 312"),
    Device("A100 80GB", 80, 312, "gpu", r"A100", "NVIDIA A100 datasheet: BF16 312"),
    Device("H100 PCIe", 80, 756, "gpu", r"H100.*PCIe", "NVIDIA H100 datasheet: BF16 1,513*"),
    Device("H100 SXM", 80, 989, "gpu", r"H100", "NVIDIA H100 datasheet: BF16 1,979*"),
    Device("H200", 141, 989, "gpu", r"H200", "NVIDIA H200 datasheet: BF16 1,979*"),
    Device("L4", 24, 121, "gpu", r"\bL4\b", "NVIDIA L4 datasheet: BF16 242*"),
    Device("A10", 24, 125, "gpu", r"\bA10\b", "NVIDIA A10 datasheet: BF16 125"),
    # No bfloat16: its float16 tensor-core rate (a bfloat16 config runs far slower there).
    Device("V100 32GB", 32, 125, "gpu", r"V100", "NVIDIA V100 datasheet: FP16 Tensor 125"),
    Device("TPU v4", 32, 275, "tpu", r"TPU v4", "cloud.google.com/tpu/docs/v4: 275, 32 GiB"),
    Device("TPU v5e", 16, 197, "tpu", r"TPU v5 ?(lite|e)", "cloud.google.com/tpu/docs/v5e: 197"),
    Device("TPU v5p", 95, 459, "tpu", r"TPU v5", "cloud.google.com/tpu/docs/v5p: 459, 95 GB"),
    Device("TPU v6e", 32, 918, "tpu", r"TPU v6", "cloud.google.com/tpu/docs/v6e: 918, 32 GB"),
)
# What JAX may use of a device's memory: on GPUs it preallocates 75% by default
# (docs.jax.dev, "GPU memory allocation"; XLA_PYTHON_CLIENT_MEM_FRACTION changes it).
USABLE_FRACTION = {"gpu": 0.75, "tpu": 1.0}
MAX_DEVICES = 1024  # The largest data-parallel layout the table considers.


def device_kind(device: Any = None) -> Device | None:
    """The DEVICES entry of a jax device (default: this process's first), or None (CPUs,
    unknown accelerators)."""
    device = device or jax.local_devices()[0]
    return None if device.platform == "cpu" else named(device.device_kind)


def named(kind: str) -> Device | None:
    """The first DEVICES entry whose pattern finds itself in jax's device_kind `kind`, or None."""
    return next((d for d in DEVICES if re.search(d.pattern, kind)), None)


# -------------------------------------------------------------------------------------------------
# The step, compiled from shapes.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One compilation of the train step: its program, cost and buffer sizes per device."""

    batch_size: int  # Global rows per update.
    executable: Any  # jax.stages.Compiled, callable on (state, batch) of these shapes.
    flops: float  # Per update, all devices together.
    memory: dict[str, int]  # memory_analysis per device: argument, output, alias, temp, code.
    seconds: float  # Lowering and compiling.


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every compilation shares: the config, the step's parts, shapes and shardings."""

    config: ml_collections.ConfigDict
    parts: steps.Parts
    abstract_state: dict
    state_sharding: dict
    mesh: Any
    example: dict[str, jax.ShapeDtypeStruct]  # One row of a training batch.
    data_source: str  # Where the shapes came from.


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Shapes and shardings of the configured run on this machine's devices; nothing allocated.

    A mesh (FSDP, tensor parallelism) over more devices than this machine has is compiled here
    with the state replicated (data parallelism); the per-kind table still shards the state as
    configured.
    """
    if _mesh_for(config, jax.device_count()) is None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.parallel.fsdp, config.parallel.mesh = 1, ""
    parallel.validate(config, jax.device_count())
    info, example, source = _data_shapes(config)
    parts = steps.build(config, info.input_shape)
    if parts.model.num_outputs < info.num_classes:
        raise ConfigError(
            f"the model has {parts.model.num_outputs} outputs but the data has "
            f"{info.num_classes} classes (or tokens); raise the model's num_classes / vocab_size"
        )
    with sharding.recording_heads() as heads:
        abstract_state = steps.abstract_state(parts)
    mesh = parallel.make_mesh(config.parallel)
    shape = dict(mesh.shape)
    sharding.check_model(shape, config.model.name, abstract_state["params"], heads)
    state_sharding = parallel.state_sharding(abstract_state, mesh)
    return Setup(config, parts, abstract_state, state_sharding, mesh, example, source)


def _data_shapes(config: ml_collections.ConfigDict) -> tuple[data.DatasetInfo, dict, str]:
    """The data's description and one training row's shapes, from the configured data or, when it
    cannot be read here, from mock data of the same shapes."""
    try:
        return *_read_shapes(config.data), "the configured data"
    except (ConfigError, DatasetUnavailable) as error:
        mock = ml_collections.ConfigDict(config.data.to_dict())
        mock.mock, mock.path = True, ""
        try:
            info, example = _read_shapes(mock)
        except Exception:  # noqa: BLE001 (the configured data's error is the one to report)
            raise error from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return info, example, f"mock data of the same shapes (the data: {reason})"


def _read_shapes(data_config: ml_collections.ConfigDict) -> tuple[data.DatasetInfo, dict]:
    info = data.info(data_config)
    data_config = ml_collections.ConfigDict(data_config.to_dict())
    data_config.workers = 0  # One batch's shapes: not worth starting worker processes.
    rows = next(
        data.train_iterator(
            data_config, global_batch_size=2, seed=0, process_index=0, process_count=1
        )
    )
    return info, {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in rows.items()}


def _parallel_config(config: ml_collections.ConfigDict) -> dict:
    """config.parallel; pmap as shard_map: the same per-device program, but one that jit lowers."""
    fields = config.parallel.to_dict()
    if fields["strategy"] == "pmap":
        fields["strategy"] = "shard_map"
    return fields


def compile_step(s: Setup, batch_size: int) -> Compiled:
    """The train step for a global batch of `batch_size` rows, lowered and compiled from shapes.

    One update per call: train.steps_per_call > 1 runs that update in a lax.scan, whose body
    XLA's cost analysis counts once, and holds steps_per_call batches (MemoryModel adds them).
    """
    step = steps.compile_train_step(s.parts, _parallel_config(s.config), s.mesh, s.state_sharding)
    state = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        s.abstract_state,
        s.state_sharding,
    )
    rows = parallel.batch_sharding(s.mesh)
    batch = {
        k: jax.ShapeDtypeStruct((batch_size, *x.shape), x.dtype, sharding=rows)
        for k, x in s.example.items()
    }
    start = time.perf_counter()
    executable = step.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    cost = executable.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    # One device's program under SPMD partitioning: its FLOPs times the devices.
    flops = float(cost.get("flops", 0.0)) * s.mesh.devices.size
    stats = executable.memory_analysis()
    memory = {
        name: int(getattr(stats, f"{name}_size_in_bytes", 0) if stats is not None else 0)
        for name in ("argument", "output", "alias", "temp", "generated_code")
    }
    return Compiled(batch_size, executable, flops, memory, seconds)


def activation_bytes(s: Setup, rows: int) -> int:
    """Bytes the backward pass keeps of one micro-batch of `rows` rows: the residuals of jax.vjp of
    the loss with respect to the parameters, the loss's own inputs excluded (traced, not run)."""
    parts = dataclasses.replace(s.parts, train_model=s.parts.model)  # No mapped BatchNorm axis.
    kept = []

    def residuals(params: dict, model_state: dict, batch: dict, rng: jax.Array) -> tuple:
        loss = lambda p: steps.loss_fn(parts, p, model_state, batch, rng)[0]
        _, backward = jax.vjp(loss, params)
        inputs = {id(x) for x in jax.tree.leaves((params, model_state, batch, rng))}
        kept.append(
            sum(
                x.size * x.dtype.itemsize
                for x in jax.tree.leaves(backward)
                if id(x) not in inputs and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
            )
        )
        return ()

    batch = {k: jax.ShapeDtypeStruct((rows, *x.shape), x.dtype) for k, x in s.example.items()}
    state = s.abstract_state
    jax.eval_shape(residuals, state["params"], state["model_state"], batch, s.parts.dropout_key)
    return kept[0]


def state_bytes(abstract_state: dict, shardings: dict) -> dict[str, int]:
    """Bytes per device of each part of the state ("params", "opt_state", ...) as sharded (a
    device holds shard_shape of every leaf)."""

    def nbytes(x: jax.ShapeDtypeStruct, sharding: Any) -> int:
        return math.prod(sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize

    return {
        key: sum(map(nbytes, jax.tree.leaves(part), jax.tree.leaves(shardings[key])))
        for key, part in abstract_state.items()
    }


def _mesh_for(config: ml_collections.ConfigDict, devices: int) -> AbstractMesh | None:
    """The mesh research/parallel.py would make over `devices` devices, without them; None when
    parallel.mesh / parallel.fsdp cannot be laid over that many."""
    try:
        sizes = parallel.mesh_shape(config.parallel, devices)
    except ConfigError:
        return None
    return AbstractMesh(
        tuple(sizes[axis] for axis in parallel.MESH_AXES),
        parallel.MESH_AXES,
        axis_types=(AxisType.Auto,) * len(parallel.MESH_AXES),
    )


def batch_shards(mesh: Any) -> int:
    """The pieces the batch is split into: data x fsdp (the "tensor" devices share rows)."""
    return math.prod(mesh.shape[axis] for axis in parallel.BATCH_AXES)


# -------------------------------------------------------------------------------------------------
# The plan.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Bytes per device for data parallelism over n devices: the state as sharded on an n-device
    mesh, batch / n rows, temporaries linear in those rows (fitted to two compilations), and the
    step's outputs that are not written over its donated arguments."""

    config: ml_collections.ConfigDict
    abstract_state: dict
    row_bytes: int  # One training row of the batch (all its features).
    temp_fixed: float
    temp_per_row: float
    extra_outputs: int

    def bytes_on(self, devices: int) -> float | None:
        """Predicted bytes per device, or None when the batch does not split into equal
        micro-batches over `devices` (or the mesh cannot be laid over them)."""
        tc, k = self.config.train, self.config.optimizer.grad_accum_steps
        mesh = _mesh_for(self.config, devices)
        if mesh is None or tc.batch_size % (batch_shards(mesh) * k):
            return None
        shardings = parallel.state_sharding(self.abstract_state, mesh)
        state = sum(state_bytes(self.abstract_state, shardings).values())
        rows = tc.batch_size / batch_shards(mesh)
        batch = self.row_bytes * rows * tc.steps_per_call
        return state + batch + self.temp_fixed + self.temp_per_row * rows + self.extra_outputs


@dataclasses.dataclass(frozen=True)
class Layout:
    """A device kind for this run: how many it takes and what each holds."""

    device: Device
    devices: int | None  # The fewest that fit; None: none up to MAX_DEVICES does.
    bytes_per_device: float | None
    single_bytes: float | None  # On one device (None when the batch does not split so).


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `make` found; `describe` prints it. "Here" is this machine's devices."""

    experiment: str
    data_source: str
    here: str  # This machine's devices, e.g. "1 cpu device".
    device_count: int  # Of this machine.
    num_params: int
    batch_size: int
    accum_steps: int
    steps: int
    tokens_per_example: int  # Sequence length; 0 when examples are not token sequences.
    compiled_flops: float  # Per update (XLA).
    estimate_flops: float | None  # Per update: 6N + 12 L D T per token (GPT), else None.
    state: dict[str, int]  # Per device here, by part of the state.
    batch_bytes: int  # Per device here.
    activations: int  # Per device here, one micro-batch.
    memory: dict[str, int]  # memory_analysis per device here (the configured batch).
    memory_model: MemoryModel
    compile_seconds: tuple[float, float]
    layouts: tuple[Layout, ...]
    setup: Setup  # For `measure`: the shapes, shardings and
    compiled: Compiled  # the step compiled at the configured batch.

    @property
    def model_flops(self) -> float:
        """Per update: the analytic estimate where there is one, else XLA's count."""
        return self.estimate_flops or self.compiled_flops

    @property
    def total_bytes(self) -> int:
        """Per device here: arguments, temporaries and outputs not written over the arguments."""
        m = self.memory
        return m["argument"] + m["temp"] + m["output"] - m["alias"] + m["generated_code"]

    def step_seconds(self, device: Device, devices: int, mfu: float) -> float:
        return self.model_flops / (devices * device.peak_tflops * 1e12 * mfu)

    def describe(self, mfu: float = 0.4) -> str:
        """The plan as a few lines and a table."""
        tokens = self.tokens_per_example
        per_update = self.batch_size * (tokens or 1)
        unit = "token" if tokens else "example"
        micro = self.batch_size // self.accum_steps
        lines = [
            f"plan for {self.experiment} (nothing trained, nothing allocated); batch shapes "
            f"from {self.data_source}",
            f"parameters  {self.num_params:,}",
            f"batch       {self.batch_size:,}"
            + (f" x {tokens:,} tokens = {per_update:,} tokens" if tokens else " examples")
            + f" per update, {self.accum_steps} micro-batch(es) of {micro:,}; "
            f"{self.steps:,} updates"
            + (f" = {_count(self.steps * per_update)} tokens" if tokens else ""),
            f"FLOPs       {self.compiled_flops:.3e} per update, "
            f"{self.compiled_flops / per_update:.3e} per {unit} (XLA cost analysis)",
        ]
        if self.estimate_flops:
            lines.append(
                f"            6N + 12LDT estimate {self.estimate_flops / per_update:.3e} per token; "
                f"compiled / estimate {self.compiled_flops / self.estimate_flops:.3f}"
            )
        first, second = self.compile_seconds
        rows_here = self.batch_size // self.device_count
        lines += [
            f"compiled    for {self.here} in {first:.1f} s, and again at another batch for the "
            f"memory per row ({second:.1f} s)",
            f"memory per device here, {rows_here:,} rows a device (XLA buffer assignment, "
            f"{jax.default_backend()}):",
        ]
        rows = [
            ("parameters", self.state.get("params", 0), ""),
            ("optimizer state", self.state.get("opt_state", 0), ""),
            ("EMA parameters", self.state.get("ema_params", 0), ""),
            ("model state", self.state.get("model_state", 0), "BatchNorm statistics"),
            ("batch", self.batch_bytes, ""),
            (
                "activations",
                self.activations,
                f"kept for the backward pass, one micro-batch "
                f"({max(1, rows_here // self.accum_steps):,} rows)",
            ),
            (
                "other temporaries",
                self.memory["temp"] - self.activations,
                "gradients, optimizer scratch, micro-batches kept at once",
            ),
            ("total", self.total_bytes, "XLA: arguments + temporaries + new outputs"),
        ]
        for name, nbytes, note in rows:
            if nbytes or name in ("parameters", "total"):
                lines.append(f"  {name:<18s} {_size(nbytes):>10s}  {note}".rstrip())
        lines += [
            "",
            f"per device kind: data parallel over n devices, each with the state and batch / n "
            f"rows; times at {mfu:.0%} MFU, {self.steps:,} updates (evaluations not counted)",
            f"  {'device':<10s} {'memory':>7s} {'peak bf16':>10s}  {'on 1 device':<17s} "
            f"{'devices':>7s} {'per device':>10s} {'update':>9s} {'run':>10s}",
        ]
        for layout in self.layouts:
            d = layout.device
            one = "batch does not split"
            if layout.single_bytes is not None:
                one = f"{_size(layout.single_bytes)} {'fits' if layout.devices == 1 else 'no'}"
            cells = [f"{'none':>7s}"]
            if layout.devices is not None:
                step = self.step_seconds(d, layout.devices, mfu)
                cells = [
                    f"{layout.devices:>7d}",
                    f"{_size(layout.bytes_per_device):>10s}",
                    f"{_duration(step):>9s}",
                    f"{_duration(step * self.steps):>10s}",
                ]
            lines.append(
                f"  {d.name:<10s} {d.memory_gib:>4.0f} GB {d.peak_tflops:>5.0f} TF/s  {one:<17s} "
                + " ".join(cells)
            )
        lines.append(
            "  fits: within 75% of a GPU's memory (JAX's default preallocation) or all of a "
            "TPU's; devices: the fewest that fit and split the micro-batches evenly; peaks: "
            "dense bf16, vendors' datasheets"
        )
        return "\n".join(lines)


def make(config: ml_collections.ConfigDict) -> Plan:
    """Compile the configured step twice from shapes and work out the plan (see the module)."""
    s = setup(config)
    tc, k = config.train, config.optimizer.grad_accum_steps
    here, shards = jax.device_count(), batch_shards(s.mesh)
    first = compile_step(s, tc.batch_size)
    # A second batch for the slope of temporaries per row: half, when it still splits evenly.
    half = tc.batch_size // 2
    other_batch = half if half and half % (shards * k) == 0 else 2 * tc.batch_size
    second = compile_step(s, other_batch)
    rows_first, rows_second = tc.batch_size / shards, other_batch / shards
    per_row = (first.memory["temp"] - second.memory["temp"]) / (rows_first - rows_second)
    row_bytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in s.example.values())
    model = MemoryModel(
        config=config,
        abstract_state=s.abstract_state,
        row_bytes=row_bytes,
        temp_fixed=first.memory["temp"] - per_row * rows_first,
        temp_per_row=per_row,
        extra_outputs=(
            first.memory["output"] - first.memory["alias"] + first.memory["generated_code"]
        ),
    )
    # Every device count the batch splits over: n divides the rows of a micro-batch.
    needs = {n: model.bytes_on(n) for n in range(1, min(MAX_DEVICES, tc.batch_size // k) + 1)}
    needs = {n: b for n, b in needs.items() if b is not None}
    layouts = []
    for device in DEVICES:
        usable = device.memory_gib * GIB * USABLE_FRACTION[device.platform]
        n = next((n for n, b in needs.items() if b <= usable), None)
        layouts.append(Layout(device, n, needs.get(n), needs.get(1)))

    params = s.abstract_state["params"]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tokens = s.parts.input_shape[0] if len(s.parts.input_shape) == 1 else 0
    return Plan(
        experiment=config.experiment,
        data_source=s.data_source,
        here=f"{here} {jax.default_backend()} device(s)"
        + (", data parallel (the configured mesh needs more)" if s.config is not config else ""),
        device_count=here,
        num_params=num_params,
        batch_size=tc.batch_size,
        accum_steps=k,
        steps=tc.steps,
        tokens_per_example=tokens,
        compiled_flops=first.flops,
        estimate_flops=gpt_flops_per_token(config, params, tokens) * tc.batch_size * tokens or None,
        state=state_bytes(s.abstract_state, s.state_sharding),
        batch_bytes=int(row_bytes * tc.batch_size / here),
        activations=activation_bytes(s, max(1, tc.batch_size // (here * k))),
        memory=first.memory,
        memory_model=model,
        compile_seconds=(first.seconds, second.seconds),
        layouts=tuple(layouts),
        setup=s,
        compiled=first,
    )


def gpt_flops_per_token(config: ml_collections.ConfigDict, params: Mapping, tokens: int) -> float:
    """nanoGPT's estimate_mfu FLOPs per token for GPT: 6N + 12 L D T (N without the position
    table, whose rows are looked up, not multiplied); 0 for other models."""
    if config.model.name != "gpt" or not tokens:
        return 0.0
    n = sum(x.size for x in jax.tree.leaves(params)) - sum(
        x.size for x in jax.tree.leaves(params.get("wpe", {}))
    )
    m = config.model
    return 6 * n + 12 * m.num_layers * m.embed_dim * tokens


def _size(nbytes: float) -> str:
    """'512 KiB', '47.3 MiB', '1.25 GiB'."""
    if nbytes < 2**20:
        return f"{nbytes / 2**10:.0f} KiB"
    if nbytes < GIB:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / GIB:.2f} GiB"


def _count(n: float) -> str:
    """'768', '1.5M', '294.9B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    """'40 us', '850 ms', '42.0 s', '3.5 h', '2.9 days'."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -------------------------------------------------------------------------------------------------
# This machine, for real.
# -------------------------------------------------------------------------------------------------


def run_steps(s: Setup, compiled: Compiled, count: int) -> dict[str, Any]:
    """Allocate the state as the trainer does and a batch of zeros (the step's cost does not
    depend on the values), run `compiled` once to warm up and `count` times timed. Returns the
    seconds of each timed call, the bytes of the state and batch on this process's first device,
    the peak bytes its allocator reports in use (None where it reports none: CPUs) and the loss."""
    state = jax.jit(lambda key: steps.init_state(s.parts, key), out_shardings=s.state_sharding)(
        s.parts.init_key
    )
    sharding = parallel.batch_sharding(s.mesh)
    batch = {
        k: jax.device_put(np.zeros((compiled.batch_size, *x.shape), x.dtype), sharding)
        for k, x in s.example.items()
    }
    state, metrics = compiled.executable(state, batch)  # Warm-up.
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        state, metrics = compiled.executable(state, batch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    device = jax.local_devices()[0]
    allocated = sum(
        shard.data.nbytes
        for array in jax.tree.leaves((state, batch))
        for shard in array.addressable_shards
        if shard.device == device
    )
    stats = device.memory_stats() or {}  # None on a CPU.
    return {
        "seconds": seconds,
        "allocated_bytes": int(allocated),
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "loss": float(metrics["loss"]),
    }


def measure(plan: Plan, steps_to_time: int = 5) -> dict[str, Any]:
    """The plan's step, for real on this machine (`run_steps`): median time per update, FLOP/s,
    MFU where this device's peak is known, and the memory it holds."""
    ran = run_steps(plan.setup, plan.compiled, steps_to_time)
    step_s = statistics.median(ran["seconds"])
    device = jax.local_devices()[0]
    kind = device_kind(device)
    model_flops_per_s = plan.model_flops / step_s
    return {
        "steps": steps_to_time,
        "ms_per_step": step_s * 1e3,
        "flops_per_s": plan.compiled.flops / step_s,  # XLA's count
        "model_flops_per_s": model_flops_per_s,  # What MFU is of.
        "mfu": model_flops_per_s / (jax.device_count() * kind.peak_tflops * 1e12) if kind else None,
        "device": kind.name if kind else device.device_kind,
        "allocated_bytes": ran["allocated_bytes"],
        "peak_bytes": ran["peak_bytes"],  # Temporaries included; GPU and TPU.
        "loss": ran["loss"],
    }


def describe_measured(plan: Plan, measured: dict[str, Any]) -> str:
    """`measure`'s figures beside the plan's, in two lines."""
    mfu = (
        f", MFU {measured['mfu']:.1%} of {measured['device']}'s peak"
        if measured["mfu"] is not None
        else f" ({measured['device']}: no known peak)"
    )
    return (
        f"measured here: {measured['steps']} steps on zeros, {measured['ms_per_step']:.1f} ms per "
        f"update (median), {measured['model_flops_per_s'] / 1e9:,.1f} GFLOP/s of model FLOPs"
        f"{mfu}\n"
        f"memory: state and batch {_size(measured['allocated_bytes'])} allocated (the plan: "
        f"{_size(plan.memory['argument'])}); "
        + (
            f"peak in use {_size(measured['peak_bytes'])} (the plan: {_size(plan.total_bytes)})"
            if measured["peak_bytes"] is not None
            else f"no peak reported by {jax.default_backend()} (the plan: "
            f"{_size(plan.total_bytes)} in all)"
        )
    )

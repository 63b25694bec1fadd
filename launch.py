"""The command line: flags in, one call out. No training logic lives here.

    python launch.py --config=experiments/digits_cnn.py --workdir=runs/digits \\
        --config.optimizer.learning_rate=0.05
    python launch.py train --config=experiments/digits_cnn.py:smoke --workdir=runs/smoke
    python launch.py sweep --config=experiments/digits_cnn.py --workdir=sweeps/digits --parallel=2
    python launch.py report sweeps/digits          # also: a run, or several run workdirs --out=DIR
    python launch.py sample --workdir=runs/shakespeare --prompt="ROMEO:"   # text from an LM run
    python launch.py lr_find --config=experiments/digits_cnn.py --workdir=runs/digits_lr_find
    python launch.py average --workdir=runs/wmt_base --last=5   # average checkpoints, evaluate
    python launch.py eval --workdir=runs/digits [--best | --step=N] [--config=experiments/x.py ...]
    python launch.py export --workdir=runs/shakespeare --out=hf/shakespeare [--step=N]
    python launch.py plan --config=experiments/openwebtext_gpt2.py [--mfu=0.4] [--time_steps=5]

Relaunching a workdir resumes its run; if the config differs in more than how long and how often
it logs, evaluates and saves, the launch is refused: use a fresh --workdir, or
`--fork_from=OLD --workdir=NEW` to start a new run from OLD's latest checkpoint (research/workdir.py).

`sweep` runs the cells an experiment's `sweep()` declares (research/sweeps/), or with --slurm
writes them as a SLURM job array; `report` tabulates and plots finished runs.
`lr_find` runs a learning-rate range test and suggests a learning rate (research/lr_find.py);
`average` averages a run's last checkpoints and evaluates the average (research/average.py);
`eval` evaluates a run's (or another source's) weights on an experiment's data (research/evaluate.py);
`export` writes a run's weights as a Hugging Face checkpoint, config.json + model.safetensors, that
`transformers` loads (GPT-2, BERT, ViT; research/pretrained.py, which also imports them).
`plan` trains nothing: parameters, FLOPs, memory per device, the devices a run fits and its time
at a stated MFU, from the step compiled from shapes (research/plan.py).
`launch.py sweep -h` and `launch.py report -h` list their flags.

Mistakes (unknown key, wrong type, invalid value, missing file or data, a workdir that is busy or
holds a different run) print one line starting with "error:" and exit with status 2 before
anything is compiled or written.
"""

import argparse
import inspect
import logging
import sys

from research.errors import EXIT_HALTED, EXIT_USAGE, HALTING_ERRORS, USAGE_ERRORS, ConfigError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is our one-line error (exit 2), not a usage dump."""

    def parse_known_args(self, args=None, namespace=None):
        # `--config.*` overrides are ours to parse (research/config.py); argparse would take a
        # value with a space in it ("--config.expected.source=Table 6") for a positional.
        args = list(sys.argv[1:] if args is None else args)
        overrides = [a for a in args if a.startswith("--config.")]
        rest = [a for a in args if not a.startswith("--config.")]
        namespace, unknown = super().parse_known_args(rest, namespace)
        return namespace, unknown + overrides

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} -h)")


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Split argv into launcher flags and `--config.*` overrides."""
    from research.config import parse_overrides

    parser = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", nargs="?", default="train", choices=["train"], help="what to do (default: train)"
    )
    parser.add_argument(
        "--config", required=True, help="experiment file, optionally with :arg (a variant)"
    )
    parser.add_argument(
        "--workdir", required=True, help="where checkpoints, metrics and results go"
    )
    parser.add_argument(
        "--fork_from",
        default=None,
        metavar="OLD_WORKDIR",
        help="start this (fresh) workdir from OLD_WORKDIR's latest checkpoint, with this config",
    )
    parser.add_argument(
        "--stop_after_step",
        type=int,
        default=None,
        help="checkpoint and exit after this step (resume later)",
    )
    # Multi-host (docs/scaling.md): every process runs this same command.
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run, letting JAX detect it (SLURM, Cloud TPU, Open MPI)",
    )
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    parser.add_argument("--num_processes", type=int, default=None, help="processes in the run")
    parser.add_argument("--process_id", type=int, default=None, help="this process, 0..N-1")
    parser.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=100,
        help="if a process dies, the others stop within about this many seconds",
    )
    args, rest = parser.parse_known_args(argv)
    if not args.workdir.strip():  # An unset shell variable: never train into the current dir.
        raise ConfigError("--workdir is empty; give the directory the run should use")
    if args.stop_after_step is not None and args.stop_after_step < 1:
        raise ConfigError(f"--stop_after_step={args.stop_after_step}: give a step >= 1")
    return args, parse_overrides(rest)


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("research").setLevel(logging.INFO)
    from research.config import build_config, validate

    try:
        if argv[:1] == ["sweep"]:
            return sweep_command(argv[1:])
        if argv[:1] == ["report"]:
            return report_command(argv[1:])
        if argv[:1] == ["sample"]:
            return sample_command(argv[1:])
        if argv[:1] == ["lr_find"]:
            return lr_find_command(argv[1:])
        if argv[:1] == ["average"]:
            return average_command(argv[1:])
        if argv[:1] == ["eval"]:
            return eval_command(argv[1:])
        if argv[:1] == ["export"]:
            return export_command(argv[1:])
        if argv[:1] == ["plan"]:
            return plan_command(argv[1:])
        args, overrides = parse(argv)
        config = build_config(args.config, overrides)
        from research import parallel

        parallel.initialize_distributed(
            auto=args.distributed,
            coordinator=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            heartbeat_timeout_s=args.heartbeat_timeout_s,
        )
        import jax

        validate(config, device_count=jax.device_count())
        from research import train

        result = train.run(
            config,
            args.workdir,
            argv=[sys.argv[0], *argv],
            stop_after_step=args.stop_after_step,
            fork_from=args.fork_from,
        )
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except HALTING_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_HALTED
    # Preempted: the shell's convention for "killed by signal N", so schedulers see it.
    return 128 + result["signal"] if result.get("signal") else 0


def sweep_command(argv: list[str]) -> int:
    """`launch.py sweep`: run a sweep's unfinished runs locally, or write a SLURM job array."""
    from research.sweeps import local, plan, slurm

    parser = ArgumentParser(
        prog="launch.py sweep",
        description=plan.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="experiment file defining sweep(), optionally :arg"
    )
    parser.add_argument(
        "--workdir", required=True, help="the sweep's directory (one run workdir per cell and seed)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs at a time (default 1; with --slurm: array tasks at a time, default no cap)",
    )
    parser.add_argument(
        "--slurm", action="store_true", help="write a SLURM job-array script instead of running"
    )
    parser.add_argument(
        "--submit", action="store_true", help="with --slurm: submit the script with sbatch"
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="with --slurm: an #SBATCH line, e.g. --sbatch=--time=02:00:00 (repeatable)",
    )
    args = parser.parse_args(argv)
    if not args.slurm and (args.submit or args.sbatch):
        raise ConfigError("--submit and --sbatch go with --slurm (without it the sweep runs here)")
    if args.slurm:
        slurm.write(
            args.config,
            args.workdir,
            submit=args.submit,
            parallel=args.parallel,
            options=args.sbatch,
        )
        return 0
    return local.run_sweep(args.config, args.workdir, parallel=args.parallel)


def report_command(argv: list[str]) -> int:
    """`launch.py report`: tables and plots of finished runs (a sweep, a run, or several runs)."""
    from research.sweeps import report

    parser = ArgumentParser(
        prog="launch.py report",
        description=report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="sweep or run workdirs")
    parser.add_argument(
        "--out", default=None, help="where the report goes (default: <path>/report)"
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="metric of the delta column and bar chart (default: the expected one, else test/accuracy)",
    )
    args = parser.parse_args(argv)
    print(report.report(args.paths, out=args.out, metric=args.metric))
    return 0


def sample_command(argv: list[str]) -> int:
    """`launch.py sample`: print text sampled from a language-model run's newest checkpoint."""
    from research import sample

    parser = ArgumentParser(
        prog="launch.py sample",
        description=sample.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="the run to sample from")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max_new_tokens", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="0 = no cut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=1)
    args = parser.parse_args(argv)
    texts = sample.sample(
        args.workdir,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        num_samples=args.num_samples,
    )
    print("\n---------------\n".join(texts))  # nanoGPT's separator
    return 0


def lr_find_command(argv: list[str]) -> int:
    """`launch.py lr_find`: a learning-rate range test of an experiment (Smith 2017)."""
    from research import lr_find
    from research.config import build_config, parse_overrides

    parser = ArgumentParser(
        prog="launch.py lr_find",
        description=lr_find.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="experiment file, optionally with :arg (a variant)"
    )
    parser.add_argument("--workdir", required=True, help="where lr_find.csv/json/png go")
    default = {k: p.default for k, p in inspect.signature(lr_find.lr_find).parameters.items()}
    for flag, kind, what in [
        ("min_lr", float, "the ramp's first learning rate"),
        ("max_lr", float, "the ramp's last learning rate"),
        ("num_steps", int, "updates along the ramp"),
    ]:
        parser.add_argument(
            f"--{flag}", type=kind, default=default[flag], help=f"{what} (default %(default)s)"
        )
    args, rest = parser.parse_known_args(argv)
    if not args.workdir.strip():  # An unset shell variable: never write into the current dir.
        raise ConfigError("--workdir is empty; give the directory the test should use")
    overrides = parse_overrides(rest)
    config = build_config(args.config, overrides)
    lr_find.lr_find(
        config,
        args.workdir,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        num_steps=args.num_steps,
        overrides=overrides,
    )
    return 0


def average_command(argv: list[str]) -> int:
    """`launch.py average`: average a run's last checkpoints into a new workdir and evaluate it."""
    from research import average

    parser = ArgumentParser(
        prog="launch.py average",
        description=average.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="the run whose checkpoints to average")
    parser.add_argument("--last", type=int, required=True, help="how many of its last checkpoints")
    parser.add_argument(
        "--out", default=None, help="where the average goes (default: inside the run)"
    )
    args = parser.parse_args(argv)
    average.average(args.workdir, args.last, args.out, argv=[sys.argv[0], "average", *argv])
    return 0


def eval_command(argv: list[str]) -> int:
    """`launch.py eval`: evaluate weights on an experiment's data; nothing is trained."""
    from research import evaluate
    from research.config import build_config, parse_overrides

    parser = ArgumentParser(
        prog="launch.py eval",
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="where the weights are: a run's workdir")
    parser.add_argument(
        "--config", default=None, help="experiment (data, metrics, model); default: the run's own"
    )
    parser.add_argument("--step", type=int, default=0, help="the checkpoint (default: the latest)")
    parser.add_argument("--best", action="store_true", help="the run's best checkpoint")
    parser.add_argument(
        "--out", default=None, help="where results go (default <workdir>/eval_stepN)"
    )
    args, rest = parser.parse_known_args(argv)
    if not args.workdir.strip():
        raise ConfigError("--workdir is empty; give the run (or weights) to evaluate")
    if args.step < 0:
        raise ConfigError(f"--step={args.step}: give a checkpoint step (0 = the latest)")
    overrides = parse_overrides(rest)
    if overrides and args.config is None:
        raise ConfigError("--config.* overrides need --config=experiments/<x>.py")
    config = build_config(args.config, overrides) if args.config else None
    evaluate.evaluate(
        config,
        args.workdir,
        args.out,
        step=args.step,
        best=args.best,
        argv=[sys.argv[0], "eval", *argv],
    )
    return 0


def export_command(argv: list[str]) -> int:
    """`launch.py export`: a run's checkpoint as a Hugging Face directory."""
    from research import pretrained

    parser = ArgumentParser(
        prog="launch.py export",
        description=pretrained.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="the run whose weights to export")
    parser.add_argument("--out", required=True, help="a new directory for the checkpoint")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint (default: latest)")
    args = parser.parse_args(argv)
    if not args.workdir.strip() or not args.out.strip():
        raise ConfigError("--workdir and --out must not be empty")
    architecture = pretrained.export_run(args.workdir, args.out, args.step)
    print(f"wrote {architecture} to {args.out} (config.json, model.safetensors)")
    return 0


def plan_command(argv: list[str]) -> int:
    """`launch.py plan`: what a run needs (memory, FLOPs, devices, time); nothing is trained."""
    from research import plan
    from research.config import build_config, parse_overrides

    parser = ArgumentParser(
        prog="launch.py plan",
        description=plan.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="experiment file, optionally with :arg (a variant)"
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilisation for the times (0.4)"
    )
    parser.add_argument(
        "--time_steps", type=int, default=0, help="also run this many real steps here (0: none)"
    )
    args, rest = parser.parse_known_args(argv)
    if not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu={args.mfu}: give a fraction of the peak in (0, 1]")
    if args.time_steps < 0:
        raise ConfigError(f"--time_steps={args.time_steps}: give 0 (none) or more steps")
    config = build_config(args.config, parse_overrides(rest))
    planned = plan.make(config)
    print(planned.describe(mfu=args.mfu), flush=True)
    if args.time_steps:
        print(plan.describe_measured(planned, plan.measure(planned, args.time_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

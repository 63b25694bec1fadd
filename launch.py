"""The command line: flags in, one call out. No training logic lives here.

    python launch.py --config=experiments/digits_cnn.py --workdir=runs/digits \\
        --config.optimizer.learning_rate=0.05
    python launch.py train --config=experiments/digits_cnn.py:smoke --workdir=runs/smoke

Mistakes (unknown key, wrong type, invalid value, missing file or data, a workdir holding another
experiment) print one line starting with "error:" and exit with status 2 before anything compiles.
"""

import argparse
import logging
import sys

EXIT_USAGE = 2


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Split argv into launcher flags and `--config.*` overrides."""
    from research.config import parse_overrides

    parser = argparse.ArgumentParser(
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
        "--force", action="store_true", help="reuse a workdir that holds another experiment"
    )
    parser.add_argument(
        "--stop_after_step",
        type=int,
        default=None,
        help="checkpoint and exit after this step (resume later)",
    )
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest)


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("research").setLevel(logging.INFO)
    from research.config import ConfigError, build_config, validate
    from research.data import DatasetUnavailable

    try:
        args, overrides = parse(argv)
        config = build_config(args.config, overrides)
        import jax

        validate(config, device_count=jax.device_count())
        from research import train

        train.run(
            config,
            args.workdir,
            argv=[sys.argv[0], *argv],
            force=args.force,
            stop_after_step=args.stop_after_step,
        )
    except (ConfigError, DatasetUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A sweep as a SLURM job array: one array task per unfinished run (a cell at one seed).

    python launch.py sweep --config=experiments/x.py --workdir=sweeps/x --slurm [--submit]

writes sweeps/x/slurm/sweep.sbatch. Task i runs exactly the `launch.py train` command the local
runner would (both take it from research/sweeps/plan.py), so the workdirs, resume and
`launch.py report` are the same.
Runs already finished are left out; after the job (or after a time limit cut tasks short), the same
command writes a script for whatever is left, and relaunched tasks resume from their checkpoints.
"""

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from research.errors import ConfigError
from research.sweeps.plan import Plan, Run, plan, write_plan
from research.sweeps.runs import status


def script(
    the_plan: Plan,
    runs: Sequence[Run],
    *,
    throttle: int | None,
    options: Sequence[str],
    cwd: Path,
) -> str:
    """The sbatch script text: one `case` branch per run, task ids 0..len(runs)-1."""
    logs = (the_plan.workdir / "slurm").resolve()
    array = f"0-{len(runs) - 1}" + (f"%{throttle}" if throttle else "")
    lines = [
        "#!/bin/bash",
        f"# Sweep {the_plan.spec}: {len(runs)} unfinished run(s), one array task each.",
        f"# Written by `launch.py sweep --config={the_plan.spec} --workdir={the_plan.workdir} "
        "--slurm`;",
        "# run that again after the job to write a script for whatever is left.",
        f"#SBATCH --job-name={shlex.quote('sweep-' + Path(the_plan.spec.partition(':')[0]).stem)}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={logs}/%A_%a.out",
        *(f"#SBATCH {option}" for option in options),
        "set -euo pipefail",
        f"cd {shlex.quote(str(cwd))}",
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for task, run in enumerate(runs):
        lines.append(f"  {task})  # {run.cell}, seed {run.seed}")
        lines.append(f"    exec {shlex.join(run.command)} ;;")
    lines += [
        '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        "",
    ]
    return "\n".join(lines)


def write(
    spec: str,
    workdir: str | Path,
    *,
    submit: bool = False,
    parallel: int | None = None,
    options: Sequence[str] = (),
    launcher: Sequence[str] | None = None,
) -> Path | None:
    """Validate the sweep, write its job-array script (None if every run is done), maybe sbatch it.

    `parallel` caps how many array tasks run at once (`--array=0-N%parallel`); None = no cap.
    """
    the_plan = plan(spec, workdir, launcher)
    runs = [run for run in the_plan.runs if status(run.workdir) != "done"]
    if not runs:
        print(f"all {len(the_plan.runs)} runs of {spec} are done; nothing to submit")
        return None
    write_plan(the_plan, runs)
    path = the_plan.workdir / "slurm" / "sweep.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script(the_plan, runs, throttle=parallel, options=options, cwd=Path.cwd()))
    print(f"wrote {path}: {len(runs)} array task(s) of {len(the_plan.runs)} runs")
    if submit:
        try:
            done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            raise ConfigError(
                f"sbatch not found; on a SLURM login node run `sbatch {path}`"
            ) from None
        if done.returncode:
            raise ConfigError(f"sbatch {path} failed: {done.stderr.strip()}")
        print(done.stdout.strip())
    else:
        print(f"submit with: sbatch {path}")
    return path

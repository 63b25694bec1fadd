"""Small helpers shared by the tests that launch runs and check what they left on disk."""

import hashlib
from pathlib import Path

import launch


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256): compare to prove nothing changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def launch_here(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run launch.py's main in this process: (exit status, stdout, stderr)."""
    status = launch.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err

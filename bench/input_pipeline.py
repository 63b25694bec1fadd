"""Decoded images/s of the ImageNet training pipeline, in the trainer's process and in grain workers.

    python bench/input_pipeline.py                      # workers 0, 1, 2; 2 rounds
    python bench/input_pipeline.py --workers=0 --workers=4 --images=512 --batches=32

What runs is the real pipeline (research/data/pipeline.py `train_iterator`) of
experiments/imagenet_resnet.py's `folder=` variant: JPEG decoding (PIL, inside the TFDS source's
read), Inception crop resized to 224 + flip (research/data/augment.py), batches of 64, ImageNet
normalisation; `data.workers` = 0 (in the trainer's process, grain's 2 read threads) or N worker
processes (research/data/workers.py). The images are an image folder the script writes into a
temporary directory: `--images` JPEGs (quality 90) of about 400x350, smooth colour fields with
noise rather than photographs, in 4 classes.

Per setting and round: the first batch (which starts the workers) is timed apart as start-up;
then `--batches` batches are taken as fast as the pipeline gives them (nothing consumes them, so
this is the pipeline's ceiling, not a training step's). Reported: images/s (wall), CPU seconds
of the main process and of all its children (the workers) over the same batches, from psutil, and
images per CPU-second ("per core": what one fully busy core decodes and augments), plus the main
process's share of that CPU: with workers it should be small, since decoding runs in them.
Medians over `--rounds` rounds, settings alternating within each round (the machine is shared).

Prints a table with the CPU model and its ISA features (research/hardware.py) and the load
average, then one JSON line. bench/NOTES.md records the runs.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("a", "b", "c", "d")


def write_images(root: Path, count: int, seed: int = 0) -> Path:
    """ROOT/train/<class>/*.jpg (and one val image per class, which the folder needs no more of):
    `count` JPEGs of 330..370 x 380..420 pixels, an upsampled 6x6 colour field plus noise."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", len(CLASSES))):
        for i in range(n):
            folder = root / split / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(330, 371)), int(rng.integers(380, 421))
            field = PIL.Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
            pixels = np.asarray(field.resize((w, h), PIL.Image.Resampling.BICUBIC), np.float32)
            pixels += rng.normal(0, 8, pixels.shape)
            image = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def cpu_seconds(process) -> tuple[float, float]:
    """(main process, all its living children) user + system CPU seconds."""
    import psutil

    def total(p) -> float:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    return total(process), sum(total(c) for c in process.children(recursive=True))


def measure(data_config, workers: int, batch_size: int, batches: int) -> dict:
    """One setting once: start-up seconds, then images/s and CPU over `batches` batches."""
    import psutil

    from research import data

    data_config.workers = workers
    me = psutil.Process()
    started = time.perf_counter()
    iterator = data.train_iterator(
        data_config, global_batch_size=batch_size, seed=0, process_index=0, process_count=1
    )
    try:
        first = next(iterator)
        assert first["image"].shape == (batch_size, 224, 224, 3), first["image"].shape
        start_s = time.perf_counter() - started
        cpu_before, wall_before = cpu_seconds(me), time.perf_counter()
        for _ in range(batches):
            next(iterator)
        wall = time.perf_counter() - wall_before
        cpu_after = cpu_seconds(me)
    finally:
        iterator.close()
    main_cpu = cpu_after[0] - cpu_before[0]
    worker_cpu = cpu_after[1] - cpu_before[1]
    images, cpu = batches * batch_size, max(main_cpu + worker_cpu, 1e-9)
    return {
        "start_s": start_s,
        "images_per_s": images / wall,
        "main_cpu_s": main_cpu,
        "worker_cpu_s": worker_cpu,
        "images_per_cpu_s": images / cpu,
        "main_cpu_share": main_cpu / cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, action="append", help="repeatable; default 0 1 2")
    parser.add_argument("--images", type=int, default=256, help="JPEGs written (train split)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="batches timed per setting")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = args.workers or [0, 1, 2]

    sys.path.insert(0, str(REPO))
    from research import config as cfg
    from research import data, hardware

    loads, runs = [os.getloadavg()[0]], {w: [] for w in settings}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "images", args.images)
        config = cfg.build_config(
            f"experiments/imagenet_resnet.py:folder={root}",
            {"data.data_dir": str(Path(tmp) / "tfds")},
        )
        data_config = config.data
        data.info(data_config)  # Prepares the folder's TFDS dataset, once, before any timing.
        for _ in range(args.rounds):
            for workers in settings:
                runs[workers].append(measure(data_config, workers, args.batch_size, args.batches))
                loads.append(os.getloadavg()[0])

    median = statistics.median
    results = {
        w: {k: median(r[k] for r in rs) for k in rs[0]} | {"rounds": rs} for w, rs in runs.items()
    }
    print(
        f"{'workers':>7} {'images/s':>9} {'img/CPU-s':>10} {'main CPU':>9} {'start s':>8}"
        f"   (batch {args.batch_size}, {args.batches} batches, median of {args.rounds} rounds)"
    )
    for w, r in results.items():
        print(
            f"{w:>7} {r['images_per_s']:>9.1f} {r['images_per_cpu_s']:>10.1f} "
            f"{r['main_cpu_share']:>9.0%} {r['start_s']:>8.1f}"
        )
    print(
        f"img/CPU-s: images per CPU-second of the main process and its workers together (one "
        f"busy core's rate); main CPU: the main process's share of that CPU. {args.images} JPEGs "
        f"~400x350, Inception crop to 224 + flip. Load average {min(loads):.1f}-{max(loads):.1f} "
        f"on {os.cpu_count()} CPUs: {hardware.summary()}."
    )
    summary = {
        "benchmark": "input_pipeline",
        "images": args.images,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "load_average": [round(x, 2) for x in loads],
        "cpus": os.cpu_count(),
        "cpu": hardware.cpu(),
        "workers": {str(w): {k: v for k, v in r.items()} for w, r in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":  # Required: grain starts its workers by spawning, which imports this.
    main()

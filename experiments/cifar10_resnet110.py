"""ResNet-110 on CIFAR-10, He et al. 2016 Sec. 4.2 exactly (the recipe is in cifar10_resnet.py).

    python launch.py --config=experiments/cifar10_resnet110.py --workdir=runs/cifar10_resnet110
    python launch.py --config=experiments/cifar10_resnet110.py:smoke --workdir=/tmp/smoke  # mock data

Data: TFDS cifar10, downloaded and prepared once (see README). The learning rate warms up at 0.01
for 400 steps, as Sec. 4.2 does for this depth.
Expected: test accuracy 93.57% (He et al. 2016, Table 6; best of 5 runs, mean 93.39 +/- 0.16),
checked with a 0.5% tolerance.
Runtime: not measured. Extrapolated from ResNet-20's ~1.0 s/step on a 2-core x86-64 CPU (AVX-512
BF16), 2026, by forward FLOPs (~6.2x): ~6 s/step, about 4-5 days for 64k steps. On a GPU: hours.
Variants: `shortcut=B` (projection shortcuts), `smoke` (ResNet-8 on mock data, 12 steps).
"""

import ml_collections

from experiments import cifar10_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ResNet-110; `arg` as cifar10_resnet.py's (shortcut=B)."""
    return cifar10_resnet.get_config(",".join(filter(None, ["depth=110", arg])))

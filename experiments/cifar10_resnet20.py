"""ResNet-20 on CIFAR-10, He et al. 2016 Sec. 4.2 exactly (the recipe is in cifar10_resnet.py).

    python launch.py --config=experiments/cifar10_resnet20.py --workdir=runs/cifar10_resnet20
    python launch.py --config=experiments/cifar10_resnet20.py:smoke --workdir=/tmp/smoke  # mock data

Data: TFDS cifar10, downloaded and prepared once (see README).
Expected: test accuracy 91.25% (He et al. 2016, Table 6), checked with a 0.5% tolerance.
Runtime: about 18 h for 64k steps at ~1.0 s/step on a 2-core x86-64 CPU (AVX-512 BF16), 2026
(measured on mock data of the real shapes: 0.8-1.0 steps/s; docs/results.md). On a GPU: hours,
not measured here.
Variants: `shortcut=B` (projection shortcuts), `smoke` (ResNet-8 on mock data, 12 steps).
"""

import ml_collections

from experiments import cifar10_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ResNet-20; `arg` as cifar10_resnet.py's (shortcut=B)."""
    return cifar10_resnet.get_config(",".join(filter(None, ["depth=20", arg])))

"""ResNet-110 on CIFAR-10, He et al. 2016 Sec. 4.2 exactly (the recipe is in cifar10_resnet.py).

    python launch.py --config=experiments/cifar10_resnet110.py --workdir=runs/cifar10_resnet110
    python launch.py --config=experiments/cifar10_resnet110.py:smoke --workdir=/tmp/smoke  # mock data

Expected: test accuracy 93.57% (He et al. 2016, Table 6), checked with a 0.5% tolerance.
Runtime: not measured here. Extrapolated from ResNet-20's ~1.0 s/step on a 2-core CPU by
forward FLOPs (~6.2x): ~6 s/step, about 4-5 days for 64k steps; on a GPU, hours.
"""

import ml_collections

from experiments import cifar10_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ResNet-110; `smoke` runs a few steps on mock data."""
    return cifar10_resnet.get_config(",".join(filter(None, ["depth=110", arg])))

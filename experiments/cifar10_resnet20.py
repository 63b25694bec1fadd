"""ResNet-20 on CIFAR-10, He et al. 2016 Sec. 4.2 exactly (the recipe is in cifar10_resnet.py).

    python launch.py --config=experiments/cifar10_resnet20.py --workdir=runs/cifar10_resnet20
    python launch.py --config=experiments/cifar10_resnet20.py:smoke --workdir=/tmp/smoke  # mock data

Expected: test accuracy 91.25% (He et al. 2016, Table 6), checked with a 0.5% tolerance.
Runtime: 64k steps at ~1.0 s/step on a 2-core x86-64 CPU (measured here on mock data of the
real shapes: 0.8-1.0 steps/s) = about 18 h; XLA:CPU convolutions are ~3x slower than PyTorch's
here (shared/bench: 0.3 s/step). On a GPU: hours, not measured here.
"""

import ml_collections

from experiments import cifar10_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ResNet-20; `smoke` runs a few steps on mock data."""
    return cifar10_resnet.get_config(",".join(filter(None, ["depth=20", arg])))

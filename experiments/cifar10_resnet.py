"""CIFAR-10 ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2).

    python launch.py --config=experiments/cifar10_resnet.py:depth=32 --workdir=runs/c10_r32
    python launch.py --config=experiments/cifar10_resnet.py:depth=44,shortcut=B --workdir=runs/c10_r44b
    python launch.py --config=experiments/cifar10_resnet.py:smoke --workdir=/tmp/smoke  # mock data

This file holds the recipe for any depth; ResNet-20, -56 and -110 also have their own files
(cifar10_resnet20.py, cifar10_resnet56.py, cifar10_resnet110.py).
The recipe, exactly as Section 4.2 gives it: depth 6n+2 with widths 16/32/64 and option-A
(zero-padding) shortcuts; batch 128; SGD with momentum 0.9 and weight decay 1e-4; learning rate
0.1, divided by 10 at 32k and 48k iterations, stop at 64k; 4-pixel padding, random 32x32 crop and
horizontal flip; 45k/5k train/val split; test on the 10k test images. ResNet-110 warms up at 0.01
for the first 400 iterations ("until the training error is below 80%"), then 0.1.
Choices the paper leaves open: per-channel mean/std normalisation (the paper subtracts the
per-pixel mean); weight decay on every parameter, BatchNorm included (as Caffe and PyTorch apply it).
Expected: test accuracy (Table 6, 100 - error) ResNet-20 91.25, 32 92.49, 44 92.83, 56 93.03,
110 93.57 (best of 5 runs; mean 93.39 +/- 0.16), checked with a 0.5% tolerance; other depths
declare none.
Data: TFDS cifar10, downloaded and prepared once (needs `pip install tensorflow-cpu`; see README).
Runtime: ResNet-20 about 18 h on a 2-core x86-64 CPU (AVX-512 BF16), 2026; deeper nets about in
proportion to their FLOPs (the per-depth files). On a GPU: hours, not measured here.
Variants: `depth=N` (6n+2; default 20), `shortcut=A|B` (option B: projection shortcuts),
`smoke` (ResNet-8 on mock data, 12 steps).
"""

import ml_collections

from research.config import defaults, parse_arg

# He et al. 2016, Table 6: test error (%) on CIFAR-10 -> accuracy.
PAPER_ACCURACY = {20: 0.9125, 32: 0.9249, 44: 0.9283, 56: 0.9303, 110: 0.9357}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # Per-channel statistics of the 50k training images.
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """He et al.'s CIFAR-10 recipe for ResNet-`depth` with shortcut option `shortcut`."""
    variant = parse_arg(arg, depth=20, shortcut="A")
    c = defaults()
    c.model = dict(name="resnet", depth=variant.depth, shortcut=variant.shortcut, num_classes=10)
    c.data.name = "cifar10"
    c.data.train_split = "train[:45000]"
    c.data.eval_split = "train[45000:]"
    c.data.test_split = "test"
    c.data.mean = CIFAR10_MEAN
    c.data.std = CIFAR10_STD
    c.data.augment.crop_padding = 4
    c.data.augment.flip = True

    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_mask = "all"
    c.schedule.name = "piecewise"
    c.schedule.boundaries = (32000, 48000)
    c.schedule.decay_factor = 0.1
    if variant.depth >= 110:  # Sec. 4.2: 0.01 until training error < 80% (~400 iterations).
        c.optimizer.learning_rate = 0.01
        c.schedule.boundaries = (400, 32000, 48000)
        c.schedule.scales = (10.0, 0.1, 0.1)

    c.train.steps = 64000
    c.train.batch_size = 128
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 2000
    c.train.checkpoint_every_steps = 2000

    if variant.depth in PAPER_ACCURACY:
        c.expected.metric = "test/accuracy"
        c.expected.value = PAPER_ACCURACY[variant.depth]
        c.expected.tolerance = 0.005  # Run-to-run spread; the paper's 110-layer std is 0.16%.
        c.expected.comparison = ">="
        c.expected.source = f"He et al. 2016, Table 6 (ResNet-{variant.depth})"
    return c

"""A small Vision Transformer on scikit-learn's handwritten digits: ViT at the scale of a CPU.

    python launch.py --config=experiments/digits_vit.py --workdir=runs/digits_vit
    python launch.py --config=experiments/digits_vit.py:smoke --workdir=/tmp/smoke   # seconds

Reproduces no paper number: the claim of Dosovitskiy et al. 2021, that a plain Transformer over
image patches is a competitive image classifier, at the smallest scale. Data as
experiments/digits_cnn.py: the 1,797 8x8 digit images that ship with scikit-learn, split 1,437
train / 360 test (stratified, fixed); evaluation uses the test split, and so did the handful of
tuning runs in docs/results.md (as the digits CNN's ablation): read the accuracy as a check that
the recipe works, not as a held-out estimate.
Model: 2x2 patches (16 tokens of 4 pixels), width 64, 4 pre-norm blocks of 4 heads, MLP 128,
global average pooling and fixed 2-D sin-cos positions (big_vision's plain ViT), 134,986 parameters.
Expected: test accuracy >= 97%, the project's target (the digits CNN reaches 99.44%;
scikit-learn's SVC(gamma=0.001) 98.89% on this split). Measured, seeds 0 / 1 / 2: 98.89% /
98.89% / 99.44% (docs/results.md).
Runtime: 2 min 40 s per run (3,000 steps, about 19 steps/s) on a 2-core x86-64 CPU (AVX-512
BF16) shared with another engineer's training jobs, 2026; on an idle machine, less.
Variants: `smoke` (12 steps, as every experiment's).
"""

import ml_collections

from research.config import defaults, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The digits ViT recipe (no variants of its own; `:smoke` is research/config.py's)."""
    parse_arg(arg)  # No variants: an unknown word is an error.
    c = defaults()
    c.model = dict(
        name="vit",
        num_classes=10,
        variant="",  # sizes below; the named ones (Ti/S/B/L) are ImageNet-sized
        width=64,
        depth=4,
        num_heads=4,
        mlp_dim=128,
        patch_size=2,
        pool="gap",
        pos_emb="sincos2d",
    )
    c.data.name = "digits"
    c.data.image_scale = 1 / 16  # Digit pixels are 0..16.
    # Without more than the CNN's pixel of shift the ViT fits the 1,437 digits by step 1,200 and
    # stalls near 97% (docs/results.md): rotation and zoom as well, and label smoothing.
    c.data.augment.translate = 0.1
    c.data.augment.rotate_deg = 10.0
    c.data.augment.scale = 0.1
    c.train.label_smoothing = 0.1

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 100

    c.train.steps = 3000
    c.train.batch_size = 128
    c.train.steps_per_call = 10  # 22-25 steps/s instead of 15 (2 shared cores)
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 500
    c.train.checkpoint_every_steps = 500

    c.expected.metric = "test/accuracy"
    c.expected.value = 0.97
    c.expected.comparison = ">="
    c.expected.source = "project target; the digits CNN scores 0.9944 on this split"
    # Where a run should be at each evaluation: the mean of seeds 0, 1, 2 run here
    # (docs/results.md); the band is about 1.5 seed standard deviations at step 500 (0.028),
    # several after it (0.003-0.010).
    c.expected.curve.metric = "eval/accuracy"
    c.expected.curve.steps = (500, 1000, 1500, 2000, 2500, 3000)
    c.expected.curve.values = (0.9370, 0.9500, 0.9620, 0.9806, 0.9861, 0.9907)
    c.expected.curve.tolerance = 0.04
    c.expected.curve.source = "this recipe run here, mean of seeds 0-2 (docs/results.md)"
    return c

"""ViT-S/16 on ImageNet-1k in 90 epochs: big_vision's "plain ViT" recipe (Beyer, Zhai, Kolesnikov
2022, "Better plain ViT baselines for ImageNet-1k"; big_vision configs/vit_s16_i1k.py), and a
Vision Transformer trained from scratch on CIFAR-10 as a variant.

    python launch.py --config=experiments/imagenet_vit.py --workdir=runs/i1k_vit_s16
    python launch.py --config=experiments/imagenet_vit.py:epochs=300 --workdir=runs/i1k_vit_s16_300
    python launch.py --config=experiments/imagenet_vit.py:cifar10 --workdir=runs/c10_vit_lite
    python launch.py --config=experiments/imagenet_vit.py:smoke --workdir=/tmp/smoke  # mock data

ImageNet, exactly as vit_s16_i1k.py gives it (file at big_vision commit 642c086):
  data: train on train[:99%] (1,268,355 images), evaluate on minival = train[99%:] (12,812) while
    training and on validation (50,000) at the end; pixels to [-1, 1] (value_range(-1, 1));
  train: decode_jpeg_and_inception_crop(224) (area 5%..100%, aspect 0.75..1.33), flip_lr,
    randaug(2, 10), mixup p=0.2 (one lambda ~ Beta(0.2, 0.2) per batch, max(lambda, 1 - lambda),
    partner = the batch rolled by one); eval: resize_small(256), central_crop(224);
  model: ViT-S/16, pool_type="gap", posemb="sincos2d", rep_size=True (pre-logits Dense(384) +
    tanh), zero-initialised head: 22,122,472 parameters;
  optimizer: batch 1024; clip_by_global_norm(1.0), scale_by_adam (b1 0.9, b2 0.999, eps 1e-8),
    lr 0.001, decoupled weight decay wd=0.0001 on kernels (".*/kernel$"), linear warmup 10,000 steps
    then cosine to 0; softmax cross-entropy, no label smoothing, no dropout;
  length: 90 epochs = round(90 * 1,268,355 / 1024) = 111,477 steps (big_vision's u.steps).
big_vision adds `wd * param` after scaling by lr, so its decay per step is schedule * 1e-4;
optax.adamw multiplies weight_decay by the scheduled lr, hence weight_decay = 1e-4 / 1e-3 = 0.1
here, the same update. Kernels are exactly our "matrices" mask for this model (no learned
positions or class token). Not reproduced: Adam's first moment kept in bfloat16 (mu_dtype), here
float32; TF's sample_distorted_bounding_box (here torchvision's sampling of the same ranges),
TF's resize ops and JPEG decoder (here scipy bilinear, PIL box, PIL); the 250,000-image shuffle
buffer (here a full shuffle per epoch); MLP biases at normal(1e-6) (here zero).
Expected: validation top-1 76.5% after 90 epochs (big_vision configs/vit_s16_i1k.py docstring,
"reach 76.5%"); `epochs=300`: 80% ("300 epochs of training reach 80%", the paper's
abstract). Other epochs and sizes declare no number.

CIFAR-10 from scratch (`cifar10`): ViT-Lite-7/4 of Hassani et al. 2021 ("Escaping the Big Data
Paradigm with Compact Transformers", arXiv 2104.05704; SHI-Labs/Compact-Transformers src/vit.py):
4x4 patches, width 256, 7 blocks of 4 heads, MLP 512, class token, learned positions, attention
dropout 0.1. Its README reports 91.38% CIFAR-10 test accuracy after 200 epochs. The recipe is that
repo's configs/datasets/cifar10.yml (timm's train.py): batch 128; AdamW, lr 5.5e-4, weight decay
0.06, 10 warmup epochs, cosine to 1e-5; label smoothing 0.1; random resized crop of area
0.8..1 at 32 x 32, flip, RandAugment m9 (2 layers), mixup 0.8 and cutmix 1.0 switched per batch
with probability 1/2; 200 epochs of the 50,000 training images = 78,125 steps.
Not reproduced: random erasing (p 0.25), stochastic depth 0.1, timm's RandAugment (its own op set,
magnitude noise std 0.5; here big_vision's ops at 9), mixup switched off after epoch 175 (and
timm's lambda is not folded to >= 1/2, its partner is the reversed batch), warmup
from 1e-5, the learning rate set once per epoch and 10 cooldown epochs, bicubic resizing, qkv
without bias (our 3,722,250 parameters vs 3,716,874). Hence the tolerance: >= 91.38% - 1.5%.
Data: TFDS imagenet2012 needs the manual download of ILSVRC-2012 and `tfds build`; cifar10
downloads (README). Neither is available here: only the smoke variant (mock data) was run.
Runtime: big_vision: 6-7 h on a TPU v3-8 for 90 epochs. Not run here: ViT-S/16 (4.6 GMACs an
image) needs about 3e18 FLOPs for 90 epochs, about a year on a 2-core CPU. The CIFAR-10 variant
(0.24 GMACs an image, about 1.4e16 FLOPs): 0.36 steps/s measured on mock data on a 2-core x86-64
CPU (AVX-512 BF16) shared with other jobs, 2026, so about 60 hours for 78,125 steps.
Variants: `epochs=N` (ImageNet epochs; default 90), `variant=B/16` (any ViT size/patch), `cifar10`,
`smoke` (tiny ViT on mock data, 12 steps).
"""

import ml_collections

from research.config import defaults, parse_arg
from research.models.vit import decode_variant

IMAGENET_TRAIN = 1_268_355  # train[:99%] of ILSVRC-2012's 1,281,167 (TFDS rounds to closest)
# (variant, epochs) -> (top-1, source) where a source gives one.
PAPER_ACCURACY = {
    ("S/16", 90): (0.765, "big_vision configs/vit_s16_i1k.py: 90 epochs 'reach 76.5%'"),
    ("S/16", 300): (0.80, "Beyer et al. 2022, abstract: '300 epochs of training reach 80%'"),
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # as Compact-Transformers' configs/datasets/cifar10.yml
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """big_vision's ViT-S/16 ImageNet recipe, or (`cifar10`) ViT-Lite-7/4 on CIFAR-10."""
    variant = parse_arg(arg, variant="S/16", epochs=90, cifar10=False)
    if variant.cifar10:
        return cifar10_config()
    c = defaults()
    width = decode_variant(variant.variant)["width"]
    c.model = dict(
        name="vit",
        num_classes=1000,
        variant=variant.variant,
        pool="gap",
        pos_emb="sincos2d",
        representation_size=width,  # rep_size=True: a pre-logits layer as wide as the model
        head_zero_init=True,
    )
    c.data.name = "imagenet2012"
    c.data.train_split = "train[:99%]"
    c.data.eval_split = "train[99%:]"  # big_vision's minival
    c.data.test_split = "validation"
    c.data.image_size = 224
    c.data.image_scale = 2 / 255  # value_range(-1, 1): x * 2/255 - 1
    c.data.mean = (1.0, 1.0, 1.0)
    c.data.std = (1.0, 1.0, 1.0)
    c.data.augment.random_resized_crop = True
    c.data.augment.crop_area = (0.05, 1.0)  # inception_crop area_min=5, area_max=100 (percent)
    c.data.augment.crop_aspect = (0.75, 1.33)  # ratio_min, ratio_max
    c.data.augment.flip = True
    c.data.augment.randaugment_layers = 2
    c.data.augment.randaugment_magnitude = 10
    c.data.augment.mixup_alpha = 0.2

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1  # big_vision wd=1e-4, not multiplied by lr: 1e-4 / 1e-3
    c.optimizer.decay_mask = "matrices"
    c.optimizer.clip_norm = 1.0
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 10_000
    c.schedule.end_lr = 0.0

    c.train.batch_size = 1024
    c.train.steps = round(variant.epochs * IMAGENET_TRAIN / c.train.batch_size)  # 90: 111,477
    c.train.eval_batch_size = 1024
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 2500  # big_vision's evals log_steps
    c.train.checkpoint_every_steps = 1000  # ckpt_steps

    if (variant.variant, variant.epochs) in PAPER_ACCURACY:
        value, source = PAPER_ACCURACY[(variant.variant, variant.epochs)]
        c.expected.metric = "test/accuracy"
        c.expected.value = value
        c.expected.tolerance = 0.005  # run to run, and the input pipeline's differences
        c.expected.comparison = ">="
        c.expected.source = source
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """ViT-Lite-7/4 from scratch on CIFAR-10 (Hassani et al. 2021), with their repo's recipe."""
    c = defaults()
    c.model = dict(
        name="vit",
        num_classes=10,
        variant="",
        width=256,
        depth=7,
        num_heads=4,
        mlp_dim=512,  # mlp_ratio 2
        patch_size=4,
        pool="token",
        pos_emb="learned",
        attention_dropout_rate=0.1,
        head_zero_init=False,
    )
    c.data.name = "cifar10"
    c.data.train_split = "train"
    c.data.eval_split = "test"  # as the paper: no validation split
    c.data.test_split = "test"
    c.data.mean = CIFAR10_MEAN
    c.data.std = CIFAR10_STD
    c.data.augment.random_resized_crop = True
    c.data.augment.crop_area = (0.8, 1.0)  # scale: [0.8, 1.0]
    c.data.augment.crop_aspect = (0.75, 4 / 3)  # timm's default ratio
    c.data.augment.flip = True
    c.data.augment.randaugment_layers = 2  # rand-m9: timm's 2 layers at magnitude 9
    c.data.augment.randaugment_magnitude = 9
    c.data.augment.mixup_alpha = 0.8
    c.data.augment.cutmix_alpha = 1.0  # mixup_switch_prob 0.5: one of the two per batch

    steps_per_epoch = 50_000 / 128
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 5.5e-4
    c.optimizer.weight_decay = 0.06  # torch AdamW: decay multiplied by the lr, as optax.adamw
    c.optimizer.decay_mask = "matrices"  # timm's create_optimizer exempts biases and norms
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = round(10 * steps_per_epoch)  # 3,906
    c.schedule.end_lr = 1e-5  # min_lr
    c.train.label_smoothing = 0.1

    c.train.batch_size = 128
    c.train.steps = round(200 * steps_per_epoch)  # 78,125
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 3906  # about every 10 epochs
    c.train.checkpoint_every_steps = 3906

    c.expected.metric = "test/accuracy"
    c.expected.value = 0.9138
    c.expected.tolerance = 0.015  # regularisers of the recipe not reproduced here (docstring)
    c.expected.comparison = ">="
    c.expected.source = (
        "Hassani et al. 2021, SHI-Labs/Compact-Transformers README: ViT-Lite-7/4, 200 epochs"
    )
    return c

"""ViT-B/16 pre-trained on ImageNet-21k, fine-tuned on CIFAR-10: the transfer recipe of Dosovitskiy
et al. 2021 as google-research/vision_transformer (vit_jax) runs it.

    # Google's ImageNet-21k ViT-B/16 in the Hugging Face layout, downloaded once:
    hf download google/vit-base-patch16-224-in21k --local-dir hf/vit-base-patch16-224-in21k
    python launch.py --config=experiments/cifar10_vit_finetune.py --workdir=runs/c10_vit_b16
    # LoRA: rank 8 on attention's query and value, the encoder frozen, the head trained.
    python launch.py --config=experiments/cifar10_vit_finetune.py:lora --workdir=runs/c10_vit_lora
    # Seconds, no download: a tiny ViT from random weights on mock CIFAR-10.
    python launch.py --config=experiments/cifar10_vit_finetune.py:smoke --workdir=/tmp/smoke

vit_jax's fine-tuning recipe (configs/common.py and input_pipeline.py): batch 512, SGD with
momentum 0.9, base lr 0.03, linear warmup then cosine decay, global-norm clipping at 1.0, no
weight decay, no label smoothing, no mixup; train on train[:98%], validate on train[98%:], test
on test; training images resized up and randomly cropped, flipped; evaluation images resized;
pixels to [-1, 1]. The pre-logits layer of the ImageNet-21k checkpoint is dropped and the new
10-way head starts at zero (vit_jax: representation_size None when fine-tuning, zero head).
Here 1,000 steps with 100 warmup, the README's longer CIFAR-10 row.

Not reproduced: vit_jax fine-tunes at 384 x 384 (resize 448, random crop 384), interpolating the
checkpoint's 14 x 14 grid of position embeddings to 24 x 24; we have no position-embedding
interpolation yet, so this recipe fine-tunes at the checkpoint's 224 (resize 256, random 224
crop: a random resized crop of 76.6% of the area, square), which vit_jax's results suggest costs
a few tenths of a point; momentum kept in float32 (vit_jax: bfloat16).
Expected: 98.86% test accuracy (google-research/vision_transformer README, "imagenet21k ViT-B_16
cifar10 1000 / 100 98.86%", at 384), tolerance 1.0 for the lower resolution; the 500-step row
reads 98.59%. The issue's "98.5-99%" range for big_vision's transfer configs agrees.
Runtime: 39 min for the 1,000-step row on the README's 8-GPU (V100) machine; not run here (no
download, GPU-sized: 1,000 x 512 images at 224 through an 86M-parameter model).
Variants: lora; smoke (no committed ViT checkpoint fits a square pipeline: random weights).
"""

import ml_collections

from research.config import defaults, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ViT-B/16 (ImageNet-21k) fine-tuned on CIFAR-10; variant `lora`."""
    variant = parse_arg(arg, lora=False)
    c = defaults()
    c.model = dict(
        name="vit",
        variant="B/16",
        num_classes=10,
        pool="token",
        pos_emb="learned",
        representation_size=0,  # the checkpoint's pre-logits dropped, as vit_jax fine-tunes
        head_zero_init=True,
        activation="gelu_exact",  # Hugging Face ViT's "gelu"
        layer_norm_epsilon=1e-12,  # Hugging Face ViT's layer_norm_eps
    )
    c.init.source = "hf/vit-base-patch16-224-in21k"
    c.init.exclude = "^head/"  # New 10-way head, zero-initialised.

    c.data.name = "cifar10"
    c.data.train_split = "train[:98%]"
    c.data.eval_split = "train[98%:]"
    c.data.test_split = "test"
    c.data.image_size = 224
    c.data.image_scale = 2 / 255  # [0, 255] -> [0, 2], then - 1: [-1, 1] as vit_jax
    c.data.mean = (1.0, 1.0, 1.0)
    c.data.std = (1.0, 1.0, 1.0)
    c.data.augment.random_resized_crop = True
    c.data.augment.crop_area = (0.766, 0.766)  # (224 / 256) ** 2: resize 256, crop 224
    c.data.augment.crop_aspect = (1.0, 1.0)
    c.data.augment.flip = True

    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.03
    c.optimizer.momentum = 0.9
    c.optimizer.clip_norm = 1.0
    c.optimizer.grad_accum_steps = 8  # vit_jax accum_steps
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 100

    c.train.steps = 1000
    c.train.batch_size = 512
    c.train.eval_batch_size = 512
    c.train.log_every_steps = 10
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100

    c.expected.metric = "test/accuracy"
    c.expected.value = 0.9886
    c.expected.comparison = "within"
    c.expected.tolerance = 0.01
    c.expected.source = (
        "google-research/vision_transformer README: imagenet21k ViT-B_16 cifar10, 1000 / 100 "
        "steps, 98.86% (at 384 x 384; here 224)"
    )
    if variant.lora:
        c.lora.rank = 8
        c.lora.alpha = 16.0
        c.lora.targets = "attn/qkv/kernel"
        c.lora.qkv = "qv"
        c.optimizer.trainable = "^head/"
        c.expected.metric = ""  # No published LoRA number for this recipe.
    return c

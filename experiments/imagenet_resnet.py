"""ResNet-50 v1.5 on ImageNet-1k in 100 epochs: the recipe of flax's ImageNet example
(google/flax examples/imagenet: configs/default.py, train.py, input_pipeline.py, models.py), with
the depth as a variant (ResNet-18/34/50/101/152, research/models/resnet.py ImageNetResNet).

    python launch.py --config=experiments/imagenet_resnet.py --workdir=runs/i1k_r50
    python launch.py --config=experiments/imagenet_resnet.py:batch=512 --workdir=runs/i1k_r50_b512
    python launch.py --config=experiments/imagenet_resnet.py:depth=18 --workdir=runs/i1k_r18
    python launch.py --config=experiments/imagenet_resnet.py:smoke --workdir=/tmp/smoke  # mock data

The recipe, as flax's example gives it:
  data: TFDS imagenet2012, train on train (1,281,167 images), evaluate on validation (50,000);
    pixels normalised by the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
  train: Inception-style random crop (area 8%..100%, aspect 3/4..4/3) resized to 224, random
    flip; eval: the central 224/256 of the shorter side at 224 (here: resize to 256, crop 224);
  model: ResNet-50 v1.5, BatchNorm momentum 0.9 (flax's convention) and epsilon 1e-5, the last BN
    gamma of every block zero-initialised, convs at flax's default lecun_normal init: 25,557,032
    parameters;
  optimizer: batch 128 (default.py); SGD, momentum 0.9, nesterov; lr 0.1 * batch / 256 (0.05 at
    batch 128), linear warmup from 0 over 5 epochs, then cosine to 0 at the end; L2 weight decay
    1e-4 * 0.5 * sum(w**2) over parameters with ndim > 1 (kernels), added to the loss: here
    optimizer.weight_decay=1e-4 with decay_mask "matrices" (ndim >= 2), the same gradient;
    softmax cross-entropy without label smoothing; float32 (half_precision=False);
  length: 100 epochs of 1,281,167 // batch steps: batch 128, 10,009 x 100 = 1,000,900 steps.
Not reproduced: TF's sample_distorted_bounding_box (10 attempts, then a central crop; here
torchvision's sampling of the same ranges) and its bicubic resize (here bilinear); the eval crop
taken first and resized bicubically (here area-resized, then cropped); a 2,048-example shuffle
buffer (here a full shuffle per epoch); flax's max pool pads "SAME" (0, 1) (here (1, 1), as
torchvision); its evaluation drops the last partial batch (here all 50,000 images are scored).
Expected: validation top-1 76.72% (flax examples/imagenet/README.md, "v100_x8": configs/v100_x8.py,
default.py at batch 512, 250,200 steps, 13.2 h on 8 NVIDIA V100), checked at `batch=512` with a
0.5% tolerance. The README's other rows: TPU v3-8 76.37% in 4.4 h, TPU v3-32 76.54% in 2.1 h,
TPU v2-32 76.67% in 2.5 h (configs/tpu.py: batch 1024 in bfloat16, 125,100 steps). The default
batch 128 (default.py) has no row; by the linear scaling rule (Goyal et al. 2017, Table 2c: 76.4%
to 76.3% from batch 256 to 8k) it is expected within 1% of 76.72%. Other depths declare no number.
Data: TFDS imagenet2012 needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, downloaded by
hand from image-net.org into the manual directory, then prepared once (needs TensorFlow):
    tfds build imagenet2012 --manual_dir=$IMAGENET_DOWNLOAD_PATH --file_format=array_record
(`--data_dir=DIR`, then `--config.data.data_dir=DIR`). Or an image folder in torchvision's
ImageFolder layout (ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG; research/data/
image_folder.py), prepared into TFDS on first use without TensorFlow (it reads every file once):
    python launch.py --config=experiments/imagenet_resnet.py:folder=/data/imagenet --workdir=runs/r50
The epochs count ImageNet's 1,281,167 training images; for another folder set
--config.train.steps and the head's --config.model.num_classes. Not available here: only the
smoke variant (mock data) was run.
Runtime: flax's README, above. Not run here: ResNet-50 is 4.1 GMACs an image forward, about
3.5e18 FLOPs for 100 epochs, years on a 2-core CPU.
Variants: `depth=18|34|50|101|152` (default 50), `batch=N` (lr scaled as batch / 256; default 128),
`folder=ROOT` (an image folder instead of TFDS imagenet2012),
`smoke` (ResNet-18 at width 8 on 224x224 mock data, 12 steps: 25 s on 2 CPU cores).
"""

import ml_collections

from research.config import defaults, parse_arg

IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 train images (TFDS imagenet2012 "train")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # flax input_pipeline.py MEAN_RGB / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # STDDEV_RGB / 255
# (depth, batch) -> (top-1, tolerance, source) where a source gives one.
README_ACCURACY = {
    (50, 512): (0.7672, 0.005, "flax examples/imagenet/README.md: v100_x8, 250,200 steps, 76.72%"),
    (50, 128): (
        0.7672,
        0.01,
        "flax examples/imagenet/README.md: v100_x8 (batch 512) 76.72%; default.py's batch 128 "
        "by the linear scaling rule",
    ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """flax's ImageNet ResNet-50 recipe for ResNet-`depth` at batch `batch`."""
    variant = parse_arg(arg, depth=50, batch=128, folder="")
    c = defaults()
    c.model = dict(
        name="imagenet_resnet",
        num_classes=1000,
        depth=variant.depth,
        zero_init_residual=True,  # models.py: scale_init=zeros_init() on each block's last norm
        conv_init="lecun_normal",  # models.py: nn.Conv's default kernel_init
    )
    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "validation"
    if variant.folder:
        c.data.name = "image_folder"
        c.data.path = variant.folder
        c.data.eval_split = c.data.test_split = "val"  # torchvision's ImageFolder layout
    c.data.image_size = 224
    c.data.mean = IMAGENET_MEAN
    c.data.std = IMAGENET_STD
    c.data.augment.random_resized_crop = True
    c.data.augment.crop_area = (0.08, 1.0)  # distorted_bounding_box_crop area_range
    c.data.augment.crop_aspect = (3 / 4, 4 / 3)  # aspect_ratio_range
    c.data.augment.flip = True
    # JPEG decoding and the Inception crop in 8 grain worker processes (train.py's tf.data runs
    # them in parallel too). bench/input_pipeline.py measured ~41 images per CPU-second on one
    # AVX2 EPYC core: size the workers to the images/s the accelerators take.
    c.data.workers = 8

    steps_per_epoch = IMAGENET_TRAIN // variant.batch  # train.py: num_examples // batch_size
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1 * variant.batch / 256  # train.py base_learning_rate
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4  # train.py: weight_decay * 0.5 * sum of squares, ndim > 1
    c.optimizer.decay_mask = "matrices"
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 5 * steps_per_epoch  # warmup_epochs = 5.0
    c.schedule.end_lr = 0.0  # cosine_decay_schedule to 0 at the last step

    c.train.batch_size = variant.batch
    c.train.steps = 100 * steps_per_epoch  # num_epochs = 100.0
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 100  # default.py log_every_steps
    c.train.eval_every_steps = steps_per_epoch  # train.py evaluates and checkpoints every epoch
    c.train.checkpoint_every_steps = steps_per_epoch

    if (variant.depth, variant.batch) in README_ACCURACY:
        value, tolerance, source = README_ACCURACY[(variant.depth, variant.batch)]
        c.expected.metric = "test/accuracy"
        c.expected.value = value
        c.expected.tolerance = tolerance
        c.expected.comparison = ">="
        c.expected.source = source
    return c

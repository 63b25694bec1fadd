"""GPT-2 (124M) pre-trained on OpenWebText: nanoGPT's `train_gpt2` recipe.

    # The token files, once, with nanoGPT (github.com/karpathy/nanoGPT) on a machine with network
    # access: data/openwebtext/prepare.py writes train.bin (~17 GB) and val.bin (~8.5 MB).
    python data/openwebtext/prepare.py
    # Before launching: memory per device, FLOPs, which GPUs and how many, how long (no training).
    python launch.py plan --config=experiments/openwebtext_gpt2.py
    # One 8-GPU node, as nanoGPT's README (`--config.parallel.strategy=gspmd` is the default):
    python launch.py --config=experiments/openwebtext_gpt2.py \\
        --config.data.path=path/to/nanoGPT/data/openwebtext --workdir=runs/owt_gpt2
    # Fewer devices, the same update: each device still runs nanoGPT's 12-row micro-batches.
    python launch.py --config=experiments/openwebtext_gpt2.py:devices=1 ...
    # A TFDS text dataset with a "text" feature instead, tokenized here with GPT-2's BPE
    # (research/data/text.py; e.g. lm1b, whose held-out split is "test").
    python launch.py --config=experiments/openwebtext_gpt2.py:tfds=lm1b ...
    # Seconds, no files, no network: a 1-layer model on generated token files.
    python launch.py --config=experiments/openwebtext_gpt2.py:smoke --workdir=/tmp/smoke

nanoGPT's config/train_gpt2.py with the train.py defaults it relies on: GPT-2 124M (12 layers,
12 heads, 768 wide, context 1024), no biases, dropout 0, the vocabulary padded from 50,257 to
50,304 ("nearest multiple of 64 for efficiency"), weights tied; batch_size 12 x block_size 1024
x gradient_accumulation_steps 5 x 8 GPUs = 491,520 tokens a step ("~0.5M"); max_iters 600,000
(~300B tokens); AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on 2-D parameters, clip 1.0;
2,000 warmup steps, cosine to min_lr 6e-5 at lr_decay_iters 600,000; bfloat16 autocast
(float32 parameters). `train.batch_size` here is the global batch, 480 sequences, and
`optimizer.grad_accum_steps` the micro-batches per update over all devices: nanoGPT's 40 (= 5 x 8)
divided by the device count, so each device runs 12 rows at a time as nanoGPT's do
(`devices=N`, default 8: 5 micro-batches of 96 rows). This model has 124,373,760 parameters
(123,587,328 without the position table: nanoGPT prints "123.59M").

Data: nanoGPT's token files (research/data/token_files.py), memory-mapped; training draws random
windows as nanoGPT's get_batch does, deterministic from (seed, step) so a resumed run is bitwise
the same. Evaluation scores every window of val.bin once (4,330 windows of 1,024); nanoGPT's
estimate_loss averages eval_iters=200 random batches of 12 (both estimate the mean per-token
loss).

Expected: val loss about 2.85 (nanoGPT README: "go down to loss of ~2.85"; config/train_gpt2.py:
"down to very nice loss of ~2.85"), checked as <= 2.85 + 0.05. Not run here.
Runtime: about 4 days on one 8x A100 40GB node (nanoGPT README; the config file says ~5 days).
`launch.py plan` counts 8.55e8 model FLOPs per token, 2.5e20 for the run: 2.9 days on 8 A100s at
40% MFU (4 days is 29%). Its memory per device, as XLA:CPU lays out this checkout's step (einsum
attention's float32 scores, the 5 micro-batches alive at once), is ~2.9 GiB per sequence, more
than an A100 holds at 8 devices' 60 sequences each: the plan's table and why, docs/plan.md.
Variants: devices=N (1, 2, 4 or 8: nanoGPT's micro-batch of 12 on N devices), tfds=NAME (a TFDS
text dataset, GPT-2 BPE tokenized here; eval split "test"), smoke.
"""

import ml_collections

from research.config import defaults, parse_arg

NANOGPT_ACCUMULATION = 5 * 8  # train_gpt2's gradient_accumulation_steps, over 8 GPUs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """nanoGPT's train_gpt2; variants devices=N, tfds=NAME."""
    variant = parse_arg(arg, devices=8, tfds="")
    if variant.devices not in (1, 2, 4, 8):
        raise ValueError(f"devices={variant.devices}: choose 1, 2, 4 or 8 (40 micro-batches split)")
    c = defaults()
    c.task = "lm"
    c.model = dict(
        name="gpt",
        vocab_size=50304,  # 50,257 padded up to a multiple of 64 (nanoGPT train.py)
        block_size=1024,
        num_layers=12,
        num_heads=12,
        embed_dim=768,
        dropout_rate=0.0,  # "for pretraining 0 is good"
        use_bias=False,
        activation="gelu_exact",  # nanoGPT's MLP uses torch's nn.GELU(): the erf form
        dtype="bfloat16",  # nanoGPT's autocast: bfloat16 compute, float32 parameters
    )
    c.data.kind = "text"
    c.data.name = "token_files"
    c.data.path = ""  # --config.data.path=DIR: nanoGPT's data/openwebtext (train.bin, val.bin)
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.test_split = "val"  # No held-out test file: the final evaluation is val again.
    if variant.tfds:
        c.data.name = variant.tfds
        c.data.eval_split = "test"
        c.data.test_split = "test"

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 6e-4
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
    c.optimizer.eps = 1e-8  # torch.optim.AdamW's default
    c.optimizer.weight_decay = 0.1
    c.optimizer.decay_mask = "matrices"  # nanoGPT's configure_optimizers: 2-D params only
    c.optimizer.clip_norm = 1.0
    c.optimizer.grad_accum_steps = NANOGPT_ACCUMULATION // variant.devices
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 2000
    c.schedule.end_lr = 6e-5  # min_lr
    c.schedule.decay_steps = 600_000  # lr_decay_iters

    c.train.steps = 600_000  # max_iters
    c.train.batch_size = 480  # 12 x 5 x 8 sequences of 1,024 tokens
    c.train.eval_batch_size = 64
    c.train.log_every_steps = 10  # log_interval
    c.train.eval_every_steps = 1000  # eval_interval
    c.train.checkpoint_every_steps = 1000  # always_save_checkpoint after each evaluation
    c.train.best_metric = "eval/loss"
    c.train.best_mode = "min"

    c.expected.metric = "eval/loss"
    c.expected.value = 2.85
    c.expected.comparison = "<="
    c.expected.tolerance = 0.05
    c.expected.source = "nanoGPT README (train_gpt2 on OpenWebText, 8x A100 40GB, ~4 days)"
    return c

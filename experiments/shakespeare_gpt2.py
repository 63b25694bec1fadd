"""GPT-2 fine-tuned on Shakespeare: nanoGPT's `finetune_shakespeare` recipe, from OpenAI's weights.

    # OpenAI's GPT-2 XL (1.5B) from the Hugging Face hub, once (any machine with network access):
    hf download openai-community/gpt2-xl --local-dir hf/gpt2-xl
    python launch.py --config=experiments/shakespeare_gpt2.py \\
        --config.data.path=path/to/tinyshakespeare.txt --workdir=runs/shakespeare_gpt2_xl
    # The 124M model (hf download openai-community/gpt2 --local-dir hf/gpt2):
    python launch.py --config=experiments/shakespeare_gpt2.py:size=gpt2 ... --workdir=runs/sgpt2
    # LoRA instead of full fine-tuning (rank 8 on attention's q|k|v, the base frozen):
    python launch.py --config=experiments/shakespeare_gpt2.py:size=gpt2,lora ... --workdir=runs/sgpt2_lora
    # Perplexity of the weights as they come, before fine-tuning (nothing trained):
    python launch.py eval --workdir=hf/gpt2 --config=experiments/shakespeare_gpt2.py:size=gpt2 \\
        --config.data.path=path/to/tinyshakespeare.txt --out=runs/gpt2_zero_shot
    # Seconds, no download: the committed random GPT-2 checkpoint (tests/fixtures/hf/gpt2), chars.
    python launch.py --config=experiments/shakespeare_gpt2.py:smoke --workdir=/tmp/smoke

nanoGPT (github.com/karpathy/nanoGPT) config/finetune_shakespeare.py with train.py's defaults:
init_from="gpt2-xl", dataset "shakespeare" (data/shakespeare/prepare.py: tinyshakespeare in
GPT-2's BPE, the first 90% for training: 301,966 tokens, the rest 36,059 for validation: the
same split as `data.path` here), block_size 1024, batch_size 1 x gradient_accumulation_steps 32
(32,768 tokens an update; "1 epoch ~= 9.2 iters"), max_iters 20, learning_rate 3e-5 constant
(decay_lr False), AdamW b1 0.9 b2 0.95 weight decay 0.1 on matrices, clip 1.0, dropout 0.0,
eval_interval 5 (eval_iters 40 random batches; here every validation window once), the best
checkpoint by validation loss kept (always_save_checkpoint False).

The weights come through `init.source`, a Hugging Face directory (research/pretrained.py; logits
equal to transformers' within 1e-5 on the committed fixtures). The model fields below are GPT-2's
own and are checked against the directory's config.json before a run.
Expected: nanoGPT's README gives no number for this recipe ("I didn't tune them much"), so none
is checked. For scale, nanoGPT's README: GPT-2 124M / XL score val loss 3.12 / 2.56 on
OpenWebText (config/eval_gpt2*.py).
Runtime: "on a single GPU just a few minutes" (nanoGPT README). Not run here: the weights
cannot be downloaded on this machine, and XL at 1024 tokens is GPU-sized.
Variants: size=gpt2|gpt2-medium|gpt2-large|gpt2-xl (default: XL, as nanoGPT); lora (rank 8,
alpha 16 on attention's fused q|k|v, the rest frozen); smoke.
"""

import ml_collections

from research.config import defaults, parse_arg

# name -> (layers, heads, width): GPT-2 paper Table 2, as nanoGPT's from_pretrained lists them.
SIZES = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """nanoGPT's finetune_shakespeare; variants size=, lora."""
    variant = parse_arg(arg, size="gpt2-xl", lora=False)
    if variant.size not in SIZES:
        raise ValueError(f"unknown GPT-2 size {variant.size!r}; choose one of {sorted(SIZES)}")
    layers, heads, width = SIZES[variant.size]
    c = defaults()
    c.task = "lm"
    c.model = dict(
        name="gpt",
        vocab_size=50257,
        block_size=1024,
        num_layers=layers,
        num_heads=heads,
        embed_dim=width,
        dropout_rate=0.0,
        use_bias=True,
        activation="gelu",  # GPT-2's gelu_new: the tanh approximation
    )
    c.init.source = f"hf/{variant.size}"  # `hf download openai-community/<size> --local-dir ...`

    c.data.kind = "text"
    c.data.name = "tiny_shakespeare"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024
    c.data.train_split = "train"
    c.data.eval_split = "validation+test"  # nanoGPT's val: the last 10%
    c.data.test_split = "validation+test"

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-5
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
    c.optimizer.weight_decay = 0.1
    c.optimizer.decay_mask = "matrices"
    c.optimizer.clip_norm = 1.0
    c.optimizer.grad_accum_steps = 32
    c.schedule.name = "constant"

    c.train.steps = 20
    c.train.batch_size = 32
    c.train.eval_batch_size = 8
    c.train.log_every_steps = 1
    c.train.eval_every_steps = 5
    c.train.checkpoint_every_steps = 5
    c.train.best_metric = "eval/loss"
    c.train.best_mode = "min"

    if variant.lora:
        # Hu et al. 2021 adapt GPT-2's attention (Sec. 7.1); PEFT's usual GPT-2 target is the
        # fused c_attn, our attn/qkv. A higher learning rate than full fine-tuning, as theirs
        # (Table 11: 2e-4 for GPT-2 M on E2E).
        c.lora.rank = 8
        c.lora.alpha = 16.0
        c.lora.dropout = 0.1
        c.lora.targets = "attn/qkv/kernel"
        c.optimizer.learning_rate = 2e-4
    return c

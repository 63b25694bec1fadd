"""BERT's claim at small scale: masked-LM pre-training on a play, then fine-tuning, beats the same
fine-tuning from random weights (Devlin et al. 2019, Sections 3 and 5; Turc et al. 2019 for the
small sizes).

    # 1. Pre-train BERT-mini (L4/H256) by masked LM on tinyshakespeare, held-out speeches removed.
    python launch.py --config=experiments/shakespeare_bert.py \\
        --config.data.path=path/to/tinyshakespeare.txt --workdir=runs/shakespeare_bert_mlm
    # 2. Fine-tune on speaker attribution, from it and from random weights, 3 seeds each.
    python launch.py sweep --config=experiments/shakespeare_bert.py:pretrained=runs/shakespeare_bert_mlm,path=path/to/tinyshakespeare.txt \\
        --workdir=sweeps/shakespeare_bert --parallel=2
    python launch.py report sweeps/shakespeare_bert
    # One fine-tuning run by hand:
    python launch.py --config=experiments/shakespeare_bert.py:finetune \\
        --config.data.path=path/to/tinyshakespeare.txt \\
        --config.data.tokenizer_model=runs/shakespeare_bert_mlm/vocab.txt \\
        --config.init.source=runs/shakespeare_bert_mlm --workdir=runs/shakespeare_bert_ft
    # Seconds, no files: both stages on a generated play.
    python launch.py --config=experiments/shakespeare_bert.py:smoke --workdir=/tmp/smoke_mlm

The task (research/data/speakers.py): which of the play's 10 most frequent speakers says a speech
(1,536 speeches; 70/10/20 train/validation/test, stratified; chance 10%, the largest class 13.7%).
Pre-training reads the play without the validation and test speeches, so it never sees a
held-out speech; the NAME: lines of the training speeches stay in its text, as they are in the
play. Both fine-tuning cells use the pre-training run's WordPiece vocabulary, so the only
difference between them is the initial weights (all but the new classifier head).

Recipe: BERT-Tiny (Turc et al. 2019: L2/H128, 2 heads, MLP 512; 1.5M parameters with the
8,192-piece WordPiece vocabulary trained on the pre-training text), 128-token windows, bfloat16
matmul operands (float32 accumulation). Pre-training: masked LM with BERT's 15% / 80-10-10 masking
drawn afresh every step, AdamW (lr 1e-3, b2 0.98 as RoBERTa, weight decay 0.01, clip 1.0), 6%
warmup then linear decay, batch 64, 3,000 steps (about 80 passes over the 240k training tokens).
Fine-tuning: the paper's recipe shape (Section A.3: Adam, 10% warmup, linear decay, dropout 0.1,
batch 32, the classifier on the pooled [CLS] output) with the learning rate and length chosen for
the random-init baseline on the validation split (lr 1e-4 / 5e-4 / 1e-3: 13.7% / 32.7% / 36.6%):
lr 1e-3, 700 steps (21 epochs of the 1,075 training speeches). Pre-training gets no tuning.

Expected: the pre-trained cell's test accuracy exceeds the random-init cell's, with a 95% interval
of the difference that excludes zero (the claim of Devlin et al. 2019, Table 1 vs. e.g. the
non-pre-trained BiLSTM baselines; Turc et al. 2019, Figure 1, for models this small). Measured
(docs/results.md): random init 32.7% +/- 2.4, pre-trained 37.7% +/- 0.3 test accuracy over seeds
0-2, difference +5.0 points, 95% interval [-0.7, +10.7]: it includes zero; over seeds 0-5 (added
after) +7.1 points [+4.7, +9.5].
Runtime on a 2-core x86-64 CPU (AVX-512 BF16), 2026, shared with other jobs: pre-training
about 25 min (1.8-3.5 steps/s); a fine-tuning run 3-6 min.
Variants:
  (default)  masked-LM pre-training.
  finetune   speaker attribution; set init.source (and data.tokenizer_model) to start from a
             pre-training run, leave them empty to start from random weights.
  smoke      12 steps of a BERT-tiny on a generated play (research/config.py); `finetune,smoke`.
  sweep()    random init vs pre-trained, 3 fine-tuning seeds each, below.
"""

import ml_collections

from research.config import defaults, parse_arg
from research.sweeps import Sweep, ablation

VOCAB_SIZE = 8192
SEQ_LEN = 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Masked-LM pre-training on the play; variant `finetune`: speaker attribution."""
    variant = parse_arg(arg, finetune=False)
    c = defaults()
    c.model = dict(
        name="bert",
        size="tiny",
        dtype="bfloat16_matmul",  # bf16 matmul operands, f32 accumulation: about 2x on a CPU
        vocab_size=VOCAB_SIZE,
        max_len=SEQ_LEN,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        head="mlm",
    )
    c.data.name = "speakers"  # The play without the held-out speeches (research/data/speakers.py).
    c.data.tokenizer = "wordpiece"
    c.data.tokenizer_vocab_size = VOCAB_SIZE
    c.data.seq_len = SEQ_LEN
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"

    c.optimizer.name = "adamw"
    c.optimizer.b1 = 0.9
    c.optimizer.eps = 1e-6  # BERT's AdamWeightDecayOptimizer
    c.optimizer.weight_decay = 0.01  # Devlin et al. A.2
    c.optimizer.decay_mask = "matrices"  # not biases or LayerNorm, as the original's exclusions
    c.optimizer.clip_norm = 1.0  # the original's clip_by_global_norm(1.0)
    c.schedule.name = "warmup_linear"

    if not variant.finetune:
        c.task = "mlm"
        c.data.kind = "masked_text"
        c.optimizer.learning_rate = 1e-3
        c.optimizer.b2 = 0.98  # RoBERTa (Liu et al. 2019): steadier with large learning rates
        c.train.steps = 3000
        c.train.steps_per_call = 10  # Fewer dispatches: a small model's steps are short.
        c.schedule.warmup_steps = 180  # 6%
        c.train.batch_size = 64
        c.train.eval_batch_size = 128
        c.train.log_every_steps = 50
        c.train.eval_every_steps = 250
        c.train.checkpoint_every_steps = 250
        c.train.best_metric = "eval/loss"
        c.train.best_mode = "min"
        c.expected.metric = ""  # No published number: the claim is checked by the sweep.
        return c

    c.task = "text_classification"
    c.data.kind = "text_classification"
    c.data.text_features = ("text",)
    c.model.head = "classifier"
    c.model.num_classes = 10
    # Tuned for the random-init baseline, on the validation split (lr 1e-4 / 5e-4 / 1e-3 over 10
    # or 20 epochs: 13.7% / 32.7% / 36.6%), so that pre-training gets no help from the recipe.
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b2 = 0.999
    c.train.steps = 700  # about 21 epochs of 1,075 speeches at batch 32
    c.train.steps_per_call = 10
    c.schedule.warmup_steps = 70  # 10%
    c.train.batch_size = 32
    c.train.eval_batch_size = 128
    c.train.log_every_steps = 70
    c.train.eval_every_steps = 140
    c.train.checkpoint_every_steps = 140
    c.train.best_metric = "eval/accuracy"
    c.init.exclude = "^classifier/"  # Used when init.source names a pre-training run.
    return c


def sweep(arg: str | None = None) -> Sweep:
    """Fine-tuning from random weights (baseline) vs from the pre-training run, 3 seeds each.

        python launch.py sweep \\
            --config=experiments/shakespeare_bert.py:pretrained=RUN,path=FILE \\
            --workdir=sweeps/shakespeare_bert --parallel=2

    RUN is the pre-training run's workdir (step 1 of the module docstring); both cells read its
    vocab.txt. `seeds=N` runs seeds 0..N-1 (runs already finished are kept); `smoke` runs both
    cells on the smoke config, from a pre-training smoke run RUN.
    """
    variant = parse_arg(arg, pretrained="", path="", seeds=3, smoke=False)
    if not variant.pretrained:
        raise ValueError(
            "give the pre-training run: sweep --config=experiments/shakespeare_bert.py:"
            "pretrained=RUN,path=FILE (RUN: the workdir of a finished pre-training run)"
        )
    baseline = {"data.tokenizer_model": f"{variant.pretrained}/vocab.txt"}
    if variant.path:
        baseline["data.path"] = variant.path
    pretrained = {"init.source": variant.pretrained}
    return ablation(
        baseline,
        {"pretrained": pretrained},
        seeds=2 if variant.smoke else variant.seeds,
        config_arg="finetune,smoke" if variant.smoke else "finetune",
        baseline_name="random_init",
    )

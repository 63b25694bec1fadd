"""BERT fine-tuned on a GLUE task (Devlin et al. 2019, Section 4.1 and Appendix A.3).

    # BERT-base on SST-2 from pre-trained weights: a checkpoint and its WordPiece vocab.txt.
    python launch.py --config=experiments/glue_bert.py \\
        --config.init.source=RUN --config.data.tokenizer_model=RUN/vocab.txt --workdir=runs/sst2
    # Another GLUE task, another of the paper's learning rates:
    python launch.py --config=experiments/glue_bert.py:task=mnli,lr=3e-5 ... --workdir=runs/mnli
    # Turc et al. 2019's BERT-Tiny (L2/H128):
    hf download google/bert_uncased_L-2_H-128_A-2 --local-dir hf/bert-tiny
    python launch.py --config=experiments/glue_bert.py:size=tiny --workdir=runs/sst2_tiny
    # The paper's learning-rate search, 4 rates x 3 seeds, picked on the dev set:
    python launch.py sweep --config=experiments/glue_bert.py --workdir=sweeps/sst2_bert
    # Seconds, no download: the committed random BERT checkpoint on mock SST-2 data.
    python launch.py --config=experiments/glue_bert.py:smoke --workdir=/tmp/smoke

The recipe (A.3 and Google's run_classifier.py): batch 32, 3 epochs, Adam (b1 0.9, b2 0.999, eps
1e-6) with weight decay 0.01 on matrices, learning rate chosen from {5e-5, 4e-5, 3e-5, 2e-5} on
the dev set (variant `lr`, default 2e-5), linear warmup over the first 10% of steps then linear
decay to 0, dropout 0.1, sequences of at most 128 WordPiece tokens, the classifier on the pooled
[CLS] output. The weights are pre-trained: `init.source` is a Hugging Face directory
(research/pretrained.py: bert-base-uncased by default, at hf/bert-base-uncased; its config.json is
checked against the model fields here) or a run of ours with a BERT of the same size; the new
classifier head starts from its initialisation (init.exclude). `--config.init.source=` (empty)
trains from random weights: the recipe runs, but it is not the paper's.
`lora`: LoRA (Hu et al. 2021) rank 8, alpha 16, dropout 0.1 on attention's query and value
slices, the encoder frozen, the classifier (and pooler) trained; lr 5e-4 (LoRA's learning rates
are ~10x full fine-tuning's: Hu et al. Table 9, RoBERTa-base 4e-4..5e-4). No number is declared
for it.

Data: TFDS glue/<task> (downloads on first use; needs network and TensorFlow to prepare). The
GLUE test labels are private (TFDS's test split has label -1), so runs are scored on the dev
split, which is both the eval and the "test" split here; the paper's Table 1 numbers are the test
server's.

Expected:
  SST-2, BERT-base: test 93.5 (Devlin et al. 2019, Table 1, GLUE server); dev accuracy 92.32
          (Hugging Face transformers, examples/pytorch/text-classification README, bert-base-
          cased, the same recipe at lr 2e-5): the dev number is the check, tolerance 1.0.
  SST-2, BERT-Tiny: test 83.2 (Turc et al. 2019; google-research/bert README, the table of the
          24 smaller BERTs, GLUE server); checked on dev with tolerance 2.0, as no dev number is
          published for it.
  Not run here (no download, no pre-trained BERT on this machine).
Runtime: not measured (no GPU here): SST-2 is 6,313 steps of 32 x 128 tokens. The smoke
variant: about 30 s on a 2-core x86-64 CPU.
Variants: task=<cola|sst2|mrpc|qqp|mnli|qnli|rte|wnli>, lr=<number>, size=base|tiny, lora, smoke
(the committed random checkpoint tests/fixtures/hf/bert_cls, mock data).
"""

import ml_collections

from research.config import defaults, parse_arg
from research.sweeps import Sweep, grid

# GLUE task -> (text features, number of classes, training examples, dev split). STS-B is a
# regression task, which this classifier does not do.
GLUE = {
    "cola": (("sentence",), 2, 8_551, "validation"),
    "sst2": (("sentence",), 2, 67_349, "validation"),
    "mrpc": (("sentence1", "sentence2"), 2, 3_668, "validation"),
    "qqp": (("question1", "question2"), 2, 363_846, "validation"),
    "mnli": (("premise", "hypothesis"), 3, 392_702, "validation_matched"),
    "qnli": (("question", "sentence"), 2, 104_743, "validation"),
    "rte": (("sentence1", "sentence2"), 2, 2_490, "validation"),
    "wnli": (("sentence1", "sentence2"), 2, 635, "validation"),
}
LEARNING_RATES = (5e-5, 4e-5, 3e-5, 2e-5)  # Devlin et al. A.3
# size -> where `hf download <hub name> --local-dir <dir>` puts the released weights.
WEIGHTS = {
    "base": ("google-bert/bert-base-uncased", "hf/bert-base-uncased"),
    "tiny": ("google/bert_uncased_L-2_H-128_A-2", "hf/bert-tiny"),
}
EPOCHS, BATCH = 3, 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BERT fine-tuning on GLUE; variants task=, lr=, size=."""
    variant = parse_arg(arg, task="sst2", lr=2e-5, size="base", lora=False)
    if variant.size not in WEIGHTS:
        raise ValueError(f"unknown size {variant.size!r}; choose one of {sorted(WEIGHTS)}")
    if variant.task not in GLUE:
        raise ValueError(f"unknown GLUE task {variant.task!r}; choose one of {sorted(GLUE)}")
    features, classes, num_train, dev = GLUE[variant.task]
    steps = EPOCHS * num_train // BATCH

    c = defaults()
    c.task = "text_classification"
    c.model = dict(
        name="bert",
        size=variant.size,
        vocab_size=30522,  # bert-base-uncased's vocabulary
        max_len=512,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        head="classifier",
        num_classes=classes,
    )
    c.data.kind = "text_classification"
    c.data.name = f"glue/{variant.task}"
    c.data.text_features = features
    c.data.tokenizer = "wordpiece"
    c.data.tokenizer_vocab_size = 30522  # Used only without data.tokenizer_model.
    c.data.seq_len = 128  # run_classifier.py max_seq_length
    c.data.train_split = "train"
    c.data.eval_split = dev
    c.data.test_split = dev  # GLUE's test labels are private.

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = variant.lr
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-6
    c.optimizer.weight_decay = 0.01
    c.optimizer.decay_mask = "matrices"  # not LayerNorm or biases, as the original
    c.optimizer.clip_norm = 1.0  # optimization.py clips the global norm at 1.0
    c.schedule.name = "warmup_linear"
    c.schedule.warmup_steps = steps // 10  # warmup_proportion 0.1

    c.train.steps = steps
    c.train.batch_size = BATCH
    c.train.eval_batch_size = 256
    c.train.log_every_steps = 100
    c.train.eval_every_steps = max(1, steps // EPOCHS)  # once an epoch
    c.train.checkpoint_every_steps = max(1, steps // EPOCHS)
    c.train.best_metric = "eval/accuracy"
    c.init.source = WEIGHTS[variant.size][1]
    c.init.exclude = "^classifier/"  # A new head on the pre-trained encoder.
    c.data.tokenizer_model = f"{c.init.source}/vocab.txt"
    if variant.lora:
        c.lora.rank = 8
        c.lora.alpha = 16.0
        c.lora.dropout = 0.1
        c.lora.targets = "attn/qkv/kernel"
        c.lora.qkv = "qv"
        c.optimizer.trainable = "^classifier/|^pooler/"
        c.optimizer.learning_rate = 5e-4

    if variant.task == "sst2" and variant.size == "tiny":
        c.expected.metric = "test/accuracy"
        c.expected.value = 0.832
        c.expected.comparison = "within"
        c.expected.tolerance = 0.02
        c.expected.source = (
            "Turc et al. 2019 via the google-research/bert README: BERT-Tiny SST-2 83.2 on the "
            "GLUE test server (checked here on dev)"
        )
    if variant.task == "sst2" and variant.size == "base":
        c.expected.metric = "test/accuracy"  # the dev split (test_split above)
        c.expected.value = 0.9232
        c.expected.comparison = "within"
        c.expected.tolerance = 0.01
        c.expected.source = (
            "Hugging Face transformers examples/pytorch/text-classification README: "
            "bert-base-cased SST-2 dev accuracy 92.32 (3 epochs, lr 2e-5, batch 32, 128 tokens); "
            "Devlin et al. 2019 Table 1: 93.5 on the GLUE test server"
        )
    return c


def sweep(arg: str | None = None) -> Sweep:
    """The paper's learning-rate search: each of {5e-5, 4e-5, 3e-5, 2e-5} at 3 seeds."""
    variant = parse_arg(arg, task="sst2", size="base")
    return grid(
        {"optimizer.learning_rate": LEARNING_RATES},
        seeds=3,
        config_arg=f"task={variant.task},size={variant.size}",
    )

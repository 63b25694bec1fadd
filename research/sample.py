"""Text from a trained language model's run (`python launch.py sample --workdir=runs/x`).

The run's workdir holds all it takes: config.json gives the model and the data, hence the
tokenizer (refitted on the same text: "char" is the sorted set of its characters); the newest
checkpoint gives the parameters, the EMA ones when the run kept an EMA (`optimizer.ema_decay`),
as its evaluations used (read through research/checkpoint.py); a LoRA run's adapters are folded
into the base weights (research/lora.py `merge`). Sampling is nanoGPT's sample.py
(temperature, top-k) with a KV cache (research/tasks/decoding.py). Checkpoints are read, never
written, so a run still training can be sampled.
"""

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from research import checkpoint, lora, models
from research import workdir as workdirs
from research.data import text, tokenizers
from research.errors import ConfigError
from research.tasks import decoding


def load(workdir: str | Path) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(config, parameters, step) of the newest checkpoint of the language-model run `workdir`."""
    wd = workdirs.path(workdir)  # Local, or a bucket (gs://).
    config_path = wd / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{wd} has no config.json; pass the --workdir of a training run")
    try:
        config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    except json.JSONDecodeError:
        raise ConfigError(f"{config_path} is not valid JSON; is {wd} a training run?") from None
    if config.get("task") != "lm":
        raise ConfigError(
            f"{wd} holds a {config.get('task')!r} run; sampling needs a language model (task 'lm')"
        )
    if checkpoint.latest_step(wd / "checkpoints") is None:
        raise ConfigError(f"{wd} has no checkpoint yet; train first, or wait for the first save")
    step, state = checkpoint.restore_state(wd / "checkpoints")
    ema = config.optimizer.ema_decay > 0
    params = state["ema_params"] if ema else state["params"]
    if "lora" in config:  # A LoRA run: adapters folded into the base, which the plain model runs.
        params = lora.merge(params, config.lora.alpha)
    return config, params, step


def tokenizer(workdir: str | Path, config: ml_collections.ConfigDict) -> tokenizers.Tokenizer:
    """The run's tokenizer: its tokenizer.json if it saved one, else rebuilt from config.data."""
    saved = workdirs.path(workdir) / "tokenizer.json"
    if saved.is_file():
        return tokenizers.from_json(saved.read_text())
    return text.tokenizer(config.data)


def sample(
    workdir: str | Path,
    *,
    prompt: str = "\n",
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int = 200,
    seed: int = 0,
    num_samples: int = 1,
) -> list[str]:
    """`num_samples` continuations of `prompt` (each starting with it); top_k=0 means no cut."""
    if max_new_tokens <= 0 or num_samples <= 0:
        raise ConfigError("--max_new_tokens and --num_samples must be positive")
    if temperature < 0:
        raise ConfigError(f"--temperature={temperature}: use 0 (greedy) or more")
    if top_k < 0:
        raise ConfigError(f"--top_k={top_k}: use 0 (no cut) or a positive number of tokens")
    if not prompt:
        raise ConfigError("--prompt is empty; give at least one character (nanoGPT's is '\\n')")
    config, params, _ = load(workdir)
    model = models.build(config.model)
    tok = tokenizer(workdir, config)
    if tok.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the tokenizer rebuilt from config.data has {tok.vocab_size} tokens but the model "
            f"{model.vocab_size}: the training text has changed since this run"
        )
    try:
        ids = tok.encode(prompt)
    except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
    rows = decoding.generate(
        model,
        params,
        np.tile(ids, (num_samples, 1)),
        max_new_tokens,
        rng=jax.random.key(seed),
        temperature=temperature,
        top_k=top_k or None,
        vocab_limit=tok.vocab_size,  # A padded vocabulary's extra ids decode to nothing.
    )
    return [tok.decode(row) for row in rows]

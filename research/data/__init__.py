"""Input side: TFDS sources (incl. the local "digits" builder), grain pipelines, augmentation.

The trainer needs three calls (see pipeline.py and sources.py for what they guarantee):

    info = research.data.info(config.data)  # classes, input shape, train-set size
    train = research.data.train_iterator(config.data, global_batch_size=128, seed=0,
                                         process_index=0, process_count=1)
    evals = research.data.eval_batches(config.data, "test", global_batch_size=128,
                                       process_index=0, process_count=1)
"""

from research.data.pipeline import eval_batches, train_iterator
from research.data.sources import DatasetInfo, DatasetUnavailable, info

__all__ = ["DatasetInfo", "DatasetUnavailable", "eval_batches", "info", "train_iterator"]

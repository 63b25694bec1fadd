"""Test-wide settings: a private TFDS data dir, so tests never read or write ~/tensorflow_datasets."""

import os
import tempfile

# Set before TFDS is imported anywhere; subprocesses (launch.py) inherit it. One per xdist worker.
os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="tfds-test-")

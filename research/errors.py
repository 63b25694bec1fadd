"""The errors a user sees. Each message is one line that says what to do; launch.py prints it
after "error:" and exits with the status the class names. Imports nothing of ours, so every room
can raise them without importing another room.

    exit 2  (nothing was run; fix the command, config, data or workdir)
        ConfigError         a mistake in the experiment file, an override or a flag
        ConfigMismatch      a relaunch whose config differs from the run in the workdir
        WorkdirBusy         another process holds the workdir's lock
        DatasetUnavailable  the data cannot be read or prepared here
    exit 1  (a run started and stopped; its checkpoints are intact)
        TrainingHalted      the update guard stopped training (non-finite values, skips)
        SaveFailed          a checkpoint could not be written
"""

EXIT_USAGE = 2  # A mistake in the command, config, data or workdir: nothing was run.
EXIT_HALTED = 1  # Training started and stopped; the message says where and why.


class ConfigError(ValueError):
    """A mistake the user can fix in the experiment file or on the command line."""


class ConfigMismatch(ConfigError):
    """The workdir holds a run made with a different config (or model shapes)."""


class WorkdirBusy(ConfigError):
    """Another live process holds the workdir's lock."""


class DatasetUnavailable(RuntimeError):
    """The dataset is neither prepared in data.data_dir nor preparable here; says what to do."""


class TrainingHalted(RuntimeError):
    """The guard stopped the run; the message names the step and the last good checkpoint."""


class SaveFailed(RuntimeError):
    """A checkpoint could not be written; the message says which and what is still intact."""

    def __init__(self, step: int, error: Exception, intact: object, directory: object):
        super().__init__(
            f"saving checkpoint step {step} failed ({type(error).__name__}: {error}); "
            f"earlier checkpoints {intact} in {directory} are intact. Free space or "
            "fix the path, then launch again to resume"
        )


USAGE_ERRORS = (ConfigError, DatasetUnavailable)
HALTING_ERRORS = (TrainingHalted, SaveFailed)

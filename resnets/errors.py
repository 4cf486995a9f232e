"""Errors a user can act on.

Every failure caused by the user's input (a config key, a data path, a checkpoint)
raises a subclass of `ResnetsError` whose message names the file or option and
what was expected. The CLI prints such messages as one line and exits with
status 2, instead of a traceback from deep inside.
"""


class ResnetsError(Exception):
    """Base class for errors caused by user input, reported without a traceback."""


class ConfigError(ResnetsError, ValueError):
    """A configuration key, value or CLI option is wrong."""


class DataError(ResnetsError, ValueError):
    """A data set path, layout, file or checksum is wrong."""


class CheckpointError(ResnetsError, RuntimeError):
    """A checkpoint or weights file is missing, corrupt or does not fit the model."""


class TrainingDiverged(ResnetsError, RuntimeError):
    """The loss, weights or optimizer state became non-finite; no checkpoint is written from them."""


class RunDirectoryBusy(ResnetsError, RuntimeError):
    """Another process is writing the run directory (it holds RUN_DIR/run.lock)."""


class WorkerFailed(ResnetsError, RuntimeError):
    """A worker process of a parallel job failed; its own message is in its log."""


class TrainingStopped(ResnetsError, RuntimeError):
    """A signal (SIGTERM, Ctrl-C) stopped the run; its checkpoint at that iteration is written."""

    def __init__(self, message: str, signal: int | None) -> None:
        super().__init__(message)
        self.signal = signal

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by that signal: 143 for SIGTERM, 130 for Ctrl-C."""
        return 128 + (self.signal or 15)

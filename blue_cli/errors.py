"""User-facing errors: one line naming the bad value and what would be valid."""


class BlueError(Exception):
    """A mistake in the user's input or environment; the CLI prints it as one red line."""


class ConfigError(BlueError):
    """A config choice or override that does not exist or does not validate."""


class DataError(BlueError):
    """A data file that is missing, unreadable or malformed."""


class DamagedFileError(DataError):
    """A file blue wrote (a run file, a checkpoint) that no longer parses or checks out;
    the message names it and what to do."""


class OfflineError(BlueError):
    """Something had to be downloaded but the network could not be reached."""


class NumericalError(BlueError):
    """A target, key, solve or update came out non-finite; the weights were left as
    before the batch and the run stops (exit code 1)."""


class RunFolderError(BlueError):
    """A run folder that another run is using, or that cannot hold this run."""


class DiskFullError(BlueError):
    """A write that found its disk (or quota) full: the message names the file, about how
    much the write needed and how much is free there; the temp file is removed."""

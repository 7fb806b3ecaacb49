"""User-facing errors: one line naming the bad value and what would be valid."""


class BlueError(Exception):
    """A mistake in the user's input or environment; the CLI prints it as one red line."""


class ConfigError(BlueError):
    """A config choice or override that does not exist or does not validate."""


class DataError(BlueError):
    """A data file that is missing, unreadable or malformed."""


class OfflineError(BlueError):
    """Something had to be downloaded but the network could not be reached."""


class NumericalError(BlueError):
    """A batch produced non-finite values; the run stops before they reach the weights (exit code 1)."""


class RunFolderError(BlueError):
    """A run folder that another run is using, or that cannot hold this run."""

"""Exceptions raised at the library's public boundary.

Every message is meant to be shown to a user as one line: what was expected, what was found,
and the fix. The CLI turns any IQAError into that line and exit code 1.
"""


class IQAError(Exception):
    """Base of every error iqa raises on purpose."""


class InvalidInputError(IQAError, ValueError):
    """A file, folder, option value or table the user gave is unusable."""


class UnknownMetricError(IQAError, ValueError):
    """A metric, network or version name that iqa does not know."""


class WeightsError(IQAError):
    """Backbone weights or a checkpoint are missing or do not fit the model."""


class StoreError(IQAError):
    """An HDF5 patch store is missing, corrupt, foreign, stale or of another schema."""


class WriteError(IQAError, OSError):
    """An output could not be written: no space left on the device, or the system refused the write.
    Nothing partial is left behind; the message names the user's path, never a temporary file. An
    OSError too, so code that caught the raw error still catches this one."""


class IQAWarning(UserWarning):
    """Something worth telling the user that does not stop the work (the CLI shows it as one line)."""

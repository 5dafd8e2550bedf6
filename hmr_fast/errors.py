"""The errors a user can act on.

Every error the project raises for bad input (a file that is not what it should be, a config
key out of range, a device that is not there) derives from `HmrFastError`; its message is one
line that names the file or field, says what was found and what is expected. The command
line prints such an error as `hmr-fast COMMAND: message` and exits 2 (`--debug`, or
HMR_FAST_DEBUG=1, shows the traceback too); any other exception is a bug and keeps its
traceback. The subclasses are also ValueError (or RuntimeError), so code that caught those
before still does.
"""
from __future__ import annotations


class HmrFastError(Exception):
    """An error in what the user gave: a file, a config key, an argument, the machine."""


class CheckpointError(HmrFastError, ValueError):
    """A checkpoint or exported model file that cannot be used; nothing in it was run."""


class DataError(HmrFastError, ValueError):
    """A dataset, keypoint or pose-prior file that cannot be used (the file, key and rows named)."""


class UsageError(HmrFastError, ValueError):
    """An argument outside the values it accepts, or arguments that do not go together."""


class DeviceError(HmrFastError, RuntimeError):
    """A device asked for that is not there (e.g. CUDA on a machine without a GPU)."""


class TrainingDiverged(HmrFastError, RuntimeError):
    """Training's loss (or weights) became NaN/Inf; the last good checkpoint was kept, not overwritten."""

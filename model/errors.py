"""Errors raised for bad user input (files, configs, observations); messages name the problem."""


class DriveMoEError(ValueError):
    """Base class: a problem with what the user gave us, not a bug in the code."""


class CheckpointError(DriveMoEError):
    """A checkpoint file is missing, unreadable, or does not match the configuration."""


class ObservationError(DriveMoEError):
    """An observation handed to the policy is malformed (image size/dtype, missing camera, NaN)."""

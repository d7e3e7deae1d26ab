"""Exceptions raised by edgevae. The library raises; only the CLI turns these into messages and exit codes."""

from __future__ import annotations


class EdgeVAEError(Exception):
    """Base class of every error edgevae raises on purpose."""


class BundleError(EdgeVAEError):
    """A bundle is missing, incomplete, tampered with, or disagrees with its manifest."""


class ProviderError(EdgeVAEError):
    """An execution provider was requested that onnxruntime cannot give (or silently dropped)."""


class InputError(EdgeVAEError, ValueError):
    """An input (array, image file, IDX file, path) cannot be turned into the model's input contract."""


class ImageReadError(InputError):
    """An image file is unreadable, corrupt, truncated, or not an image."""


class ImageSizeError(InputError):
    """An image file's size differs from the contract's and resizing was refused (strict size)."""


class ImageChannelError(InputError):
    """An image file's channel count differs from the model's and conversions were refused (``--strict``)."""


class PathError(InputError):
    """A path does not exist, a pattern matches nothing, or a folder holds no inputs."""


class ArrayInputError(InputError):
    """An array has the wrong dtype, rank, shape, or non-finite / out-of-range values."""


class IDXFormatError(InputError):
    """An IDX file has a bad magic number, an unsupported type, or the wrong length."""


class CalibrationWarning(UserWarning):
    """A false-positive rate was asked for that the calibration images cannot honestly promise."""


class CalibrationError(EdgeVAEError, ValueError):
    """Calibration is impossible: too few held-out images, or scores that are not finite."""


class MissingExtraError(EdgeVAEError):
    """An optional dependency that the requested feature needs is not installed."""


class SigningKeyError(EdgeVAEError, ValueError):
    """A key file is missing, unreadable, or not an Ed25519 key."""


class CheckpointError(EdgeVAEError, ValueError):
    """A checkpoint is unreadable, not edgevae's, or of an unsupported version; or there is nothing to resume."""


class DistributedError(EdgeVAEError, RuntimeError):
    """The process group cannot be formed or a process was lost during training."""


class ExportError(EdgeVAEError, RuntimeError):
    """Export failed (parity outside tolerance, invalid graph, unusable target folder)."""

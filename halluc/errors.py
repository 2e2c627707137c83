"""User-facing errors: one clear line naming the offending value, never a deep library traceback.

HallucError                 base; the CLI prints its message and exits with status 2
├── ModelLoadError          unknown model id/path, unsupported architecture
├── InputDataError          unreadable/corrupt annotation, caption, question or image-list file
├── OutputLocationError     output directory not writable, run directory conflicts
└── ConfigError             bad option value (intervention string, split name, ...)
"""

from __future__ import annotations

__all__ = ["ConfigError", "HallucError", "InputDataError", "ModelLoadError", "OutputLocationError"]


class HallucError(Exception):
    """Base class of every error halluc reports to the user as a single actionable line."""


class ModelLoadError(HallucError):
    """A model could not be found, loaded, or is of an unsupported architecture."""


class InputDataError(HallucError):
    """An input file (annotations, captions, questions, id list, image) is missing or malformed."""


class OutputLocationError(HallucError):
    """An output location cannot be created or written."""


class ConfigError(HallucError):
    """A configuration value or option string is invalid."""

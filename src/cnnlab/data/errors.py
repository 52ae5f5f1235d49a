"""Data errors: each names the file involved and says what to do about it."""

from __future__ import annotations


class DataError(Exception):
    """Base class for dataset problems the user can fix (missing, corrupt or mismatching files)."""


class MissingFileError(DataError, FileNotFoundError):
    """A source file is not on disk and downloading was not asked for."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one."""

    def __init__(self, message: str, *, path: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class DownloadError(DataError):
    """A transfer failed (HTTP error, connection lost); a partial download may be kept for resuming."""


class CorruptFileError(DataError):
    """A file verifies (or has no known checksum) but cannot be decoded."""

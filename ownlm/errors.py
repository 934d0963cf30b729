"""Errors a user can cause, one class per stage boundary; the CLI prints them as one line."""

from __future__ import annotations


class OwnlmError(Exception):
    """Base of every error whose message is meant for the user."""

    http_status = 500


class ConfigError(OwnlmError):
    """A config file, override or option is wrong."""

    http_status = 400


class DataError(OwnlmError):
    """A dataset file or row is malformed."""

    http_status = 400


class StoreError(OwnlmError):
    """The trace store cannot be opened or written."""

    http_status = 503


class UpstreamError(OwnlmError):
    """An upstream model server failed or timed out."""

    http_status = 502


class ModelLoadError(OwnlmError):
    """A model or tokenizer cannot be found or loaded."""

    http_status = 400


class GateRejected(OwnlmError):
    """A candidate model did not pass the promotion gate."""

    http_status = 409

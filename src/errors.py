"""Errors that are the user's to fix: the entry points print them as one line and exit 1."""


class UserInputError(ValueError):
    """Bad data, config or path. The message names the file, row, column or key."""

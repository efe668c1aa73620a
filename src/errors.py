"""Errors that are the user's to fix: the entry points print them as one line and exit 1."""


class UserInputError(ValueError):
    """Bad data, config or path. The message names the file, row, column or key."""


class NonFiniteLossError(UserInputError):
    """A NaN or infinite training loss (`model.nonfinite_loss=error`); the message names the step.

    The fix is the user's too (learning rate, precision, data), so it is printed the same way.
    """

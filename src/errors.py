"""Errors that are the user's to fix, and how the entry points print them: one line, exit 1."""
import os
import sys
from contextlib import contextmanager
from typing import Iterator


class UserInputError(ValueError):
    """Bad data, config or path. The message names the file, row, column or key."""


class NonFiniteLossError(UserInputError):
    """A NaN or infinite training loss (`model.nonfinite_loss=error`); the message names the step.

    The fix is the user's too (learning rate, precision, data), so it is printed the same way.
    """


def user_error_behind(error: BaseException | None) -> UserInputError | None:
    """The UserInputError behind an exception; Hydra's instantiate wraps them in its own."""
    while error is not None and not isinstance(error, UserInputError):
        error = error.__cause__ or error.__context__
    return error


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user's mistake as one line and exit 1; `HYDRA_FULL_ERROR=1` shows the traceback."""
    try:
        yield
    except Exception as e:
        user_error = user_error_behind(e)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(1)

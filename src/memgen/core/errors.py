"""One error type for bad input: the CLI prints its message on one line and exits 2."""


class MemgenError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """An error's first line, for a one-line message about it; its type where it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

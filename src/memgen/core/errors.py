"""One error type for bad input: the CLI prints its message on one line and exits 2."""


class MemgenError(Exception):
    """A problem the user can fix; the message says how."""

    exit_code = 2

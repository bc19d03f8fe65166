"""The one error type users see: raised with a message naming the file and the problem."""


class Error(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""

"""User errors: the CLI prints them as one line and exits 1, never as a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what and how."""

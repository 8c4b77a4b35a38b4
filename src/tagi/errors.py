"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class TagiError(Exception):
    """An error caused by user input (a path, a file, a config value); its message says what to fix."""

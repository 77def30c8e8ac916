"""The one error type users see: the CLI prints it as one line and exits with code 2."""


class SweeperError(Exception):
    """Bad input or a missing resource, with a message that names the field and the fix."""

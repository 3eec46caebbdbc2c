"""Errors the user can fix. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input (flag, file, model name, offline weights...): one clear line, exit code 2."""

"""The one exception type for bad user input, kept free of heavy imports so that ``sane-report`` (which
never needs torch) can use it."""


class UsageError(Exception):
    """A problem with the user's input (config value, data folder, run folder), stated in one line."""

"""The one exception type for user errors: the CLI prints it as one line and exits 1."""


class NuwaError(ValueError):
    """Bad input or an impossible request, worded for the person who asked.

    Internal bugs are never wrapped in this: they keep their traceback.
    """

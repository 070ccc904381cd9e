"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""


class TumorFMError(Exception):
    """A problem with the user's input (a file, a config, a path), not a bug in tumorfm.

    The message must name the file or field and say what is wrong, in one line.
    """

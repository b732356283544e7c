"""The one error type the command line turns into a one-line message."""


class ApudaeError(Exception):
    """A user-facing failure: bad input, missing data or a mismatched model.

    The CLI prints ``error: <message>`` and exits non-zero; library users can
    catch it. The message must fit on one line and say what to do.
    """

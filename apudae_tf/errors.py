"""The one error type the command line turns into a one-line message."""


class ApudaeError(Exception):
    """A user-facing failure: bad input, missing data or a mismatched model.

    The CLI prints ``error: <message>`` and exits non-zero; library users can
    catch it. The message must fit on one line and say what to do.
    """


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type), for one-line error reports."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]

"""The project's exceptions: each maps to one exit code and one readable line."""


class ImageSearchError(Exception):
    """A failure at run time (database unreachable, model not loadable): exit code 1."""

    exit_code = 1


class ConfigError(ImageSearchError):
    """Bad usage or bad configuration: exit code 2. The message names the key."""

    exit_code = 2


class ImageError(Exception):
    """One file could not be read or decoded. Not a failure of the run: it is reported."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line, however the library wrote it: its lines become
    sentences ("Connection refused. Is the server running ...?"), without a final full stop
    so that the caller can go on."""
    lines = [" ".join(line.split()) for line in str(error).splitlines()]
    sentences = [line if line[-1] in ".?!:;," else line + "." for line in lines if line]
    return " ".join(sentences).rstrip(".") or type(error).__name__


class DatabaseError(ImageSearchError):
    """The database answered with an error, or could not be reached: exit code 1."""

"""Errors a user can act on. The CLI prints them as one line and exits non-zero, never a traceback."""


class LaminaError(Exception):
    """A failure the user can fix (bad input, missing data, unusable run directory). Exit code 1."""

    exit_code = 1


class UsageError(LaminaError):
    """The command line or configuration asks for something that does not exist. Exit code 2."""

    exit_code = 2


class Reported(LaminaError):
    """A failure another process has already reported (under torchrun, the main one): exit 1 quietly."""


def choices(names) -> str:
    """'a, b, c' for listing valid names in an error message."""
    return ", ".join(sorted(names))


def warn(message: str) -> None:
    """A one-line warning on stderr: something was skipped or adjusted, and the work goes on."""
    import sys

    print(f"lamina: warning: {message}", file=sys.stderr, flush=True)


def warn_skipped_lines(numbers: list[int], path, expected: str) -> None:
    """One warning for the malformed lines of a file, the first ten by number."""
    if numbers:
        shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
        many = "s" * (len(numbers) > 1)
        warn(f"skipped {len(numbers)} malformed line{many} of {path} (line{many} {shown}): expected {expected}")

"""The one exception type the CLI turns into a single ``dsrnet: error: ...`` line and exit status 2.

It subclasses ``ValueError`` so library users who already catch ``ValueError`` for bad arguments keep working.
"""

from typing import Any


class DsrnetError(ValueError):
    """Bad user input: an unknown name, a bad config value, missing or corrupt data, a mismatched checkpoint."""


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool), else a one-line :class:`DsrnetError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DsrnetError(f"bad value for {name}: {value!r}; fix: {name} must be an integer >= {minimum}")
    return value

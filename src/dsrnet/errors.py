"""The one exception type the CLI turns into a single ``dsrnet: error: ...`` line and exit status 2.

It subclasses ``ValueError`` so library users who already catch ``ValueError`` for bad arguments keep working.
"""


class DsrnetError(ValueError):
    """Bad user input: an unknown name, a bad config value, missing or corrupt data, a mismatched checkpoint."""

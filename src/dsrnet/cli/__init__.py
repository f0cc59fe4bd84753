"""The ``dsrnet`` command line: :mod:`.main` (root parser, one-line errors) and one thin file per command."""

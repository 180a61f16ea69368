"""Errors analysis raises for input it cannot use."""


class AnalysisInputError(ValueError):
    """Input analysis cannot use. The message is one line naming the file and the field;
    the CLI prints it without a traceback."""

class UserError(Exception):
    """A problem with the user's input; the CLI prints str(e) as one line and exits 2."""

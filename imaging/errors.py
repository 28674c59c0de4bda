"""The one exception type for bad user input.

Raised where input enters (a CLI option, a folder, a file, a run id); the CLI
turns it into a one-line message and exit code 2. Anything else that goes wrong
is a failure inside synthmix and exits 1.
"""


class InputError(ValueError):
    """Bad input: the message names what was wrong and what to do."""

"""The one exception type users see.

A ``ConvscopeError`` carries a single line that names the problem and what to do about it; the
CLI prints it as ``error: <message>`` and exits with status 1, never with a traceback. Anything
else escaping the engine is a bug.
"""


class ConvscopeError(Exception):
    """A problem with the user's input (files, images, names, options), explained in one line."""

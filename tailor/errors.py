"""Errors that tailor reports to the user as one clear line."""


class TailorError(Exception):
    """A problem the user can fix; str(err) is a single line naming the file, key or symbol and what to do."""

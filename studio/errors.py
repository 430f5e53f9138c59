"""The one shape of error a user may see.

Every expected failure (a refused photo, a bad parameter, an operation that
cannot run on this photo, a vendor failure) carries a `message` written for
the person using the app: what went wrong and what to do next.
"""


class UserFacingError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

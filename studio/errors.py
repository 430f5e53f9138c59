"""The one shape of error a user may see.

Every expected failure (a refused photo, a bad parameter, an operation that
cannot run on this photo, a vendor failure) carries a `message` written for
the person using the app: what went wrong and what to do next.
"""


class UserFacingError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# What a job that failed, timed out or cannot run says to its user.
GENERIC_FAILURE = (
    "Something went wrong on our side while processing this photo. "
    "Please try again in a minute; your photo is safe."
)
TIMED_OUT = "This job took too long and was stopped. Please try again; if it keeps happening, pick another operation."
UNAVAILABLE = "This operation isn't set up on this server right now. Please pick another one."


class ServiceError(UserFacingError):
    """A request that cannot be carried out; `message` is safe to show."""


class OperationUnavailable(ServiceError):
    """The operation's provider cannot run here. `message` is for visitors; `reason`
    (which names the missing settings) is for staff: logs and the console."""

    def __init__(self, reason: str):
        super().__init__(UNAVAILABLE)
        self.reason = reason

"""The one exception type for problems a user can cause.

Console scripts turn a `UserError` into one line on stderr and exit code 2;
every other exception is a bug and surfaces with its traceback.
"""


class UserError(ValueError):
  """Bad flags, bad inputs, missing or mismatched files: something the user can fix.

  A ValueError subclass so that library callers that catch ValueError keep working.
  """

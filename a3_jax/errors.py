"""The one exception type for problems a user can cause.

Console scripts turn a `UserError` into one line on stderr and exit code 2;
every other exception is a bug and surfaces with its traceback.
"""


class UserError(ValueError):
  """Bad flags, bad inputs, missing or mismatched files: something the user can fix.

  A ValueError subclass so that library callers that catch ValueError keep working.
  """


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is a full disk or quota: OSError ENOSPC/EDQUOT,
  or the text tensorstore and orbax wrap it in."""
  import errno
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False

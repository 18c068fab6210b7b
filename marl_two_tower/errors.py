"""The user-error hierarchy: problems a user can fix, as opposed to bugs.

Everything raised at a boundary the user controls (a config value, a file given on
the command line, a checkpoint, a path) derives from :class:`UserError`; the CLI's
``main()`` prints such an error as one ``error: ...`` line and exits with status 2,
while any other exception (a bug) keeps its traceback. Concrete types live beside
the code that raises them: :class:`~marl_two_tower.config.ConfigError`,
:class:`~marl_two_tower.checkpoint.CheckpointError` (and its ``CheckpointMismatch``),
:class:`~marl_two_tower.data.errors.DataError`,
:class:`~marl_two_tower.data.download.DownloadError`.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, files, paths, flags); the message
    says what is wrong and names the key, file or flag."""


class UsageError(UserError, ValueError):
    """A command-line flag has a value outside its allowed range (``serve --threads 0``)."""

"""The errors a job reports to its user in one line, without a traceback (``raymmr.cli``)."""


class JobError(RuntimeError):
    """A problem with the job's input that the user can fix; the message says how."""


class Interrupted(JobError):
    """The user stopped the job (Ctrl-C); the message says how to continue it."""

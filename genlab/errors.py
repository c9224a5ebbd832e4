"""Errors a user reads. Each one is a single sentence naming the problem and the valid choices."""


class GenlabError(Exception):
    """A problem the user can fix; the CLI and the app show its message without a traceback."""


class UnknownModelError(GenlabError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(GenlabError, KeyError):
    def __str__(self):
        return str(self.args[0]) if self.args else ""


class CapabilityError(GenlabError):
    """The model does not declare the capability that was asked for."""


def choices(names) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none registered)"

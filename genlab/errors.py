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


class ModelError(GenlabError):
    """A model's own code (a plugin's, in-tree or third-party) raised something unexpected.

    The message names the model, its plugin, what it was doing and the original error, in one line;
    the CLI prints it, the eval runner records it against that model's row and goes on."""


class PluginLoadError(UnknownModelError):
    """The model asked for belongs to a plugin that failed to load."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: message`` of an exception on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GenlabWarning(UserWarning):
    """Something was skipped or changed and the user should know (the CLI prints it on one line)."""

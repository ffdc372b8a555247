"""The project's exceptions: one shallow tree, each a thing a person can act on."""


class BettyError(Exception):
    """Base of every error betty-mcp raises on purpose."""


class ConfigError(BettyError):
    """The configuration file or a flag is invalid."""


class ManifestError(BettyError):
    """A skill.yaml or agent.yaml is broken; the message names the file, the field and the problem."""


class ArgumentsError(BettyError):
    """Tool arguments do not match the tool's input schema."""


class PathOutsideWorkspace(ArgumentsError):
    """A path argument resolves outside the workspace and the allowed roots."""

"""The one error type of bad input: a one-line message naming the key or file, raised before any work."""


class ConfigError(ValueError):
    pass

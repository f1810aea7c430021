"""Settings for every part of the service, read from environment variables and validated at start."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]

"""Central configuration shared by the Serve application and the agent: settings, CORS, logging."""

from config.settings import Environment, Settings, SettingsError, get_settings, load_settings

__all__ = ["Environment", "Settings", "SettingsError", "get_settings", "load_settings"]

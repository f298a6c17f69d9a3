"""Gateway configuration: TOML + ``${VAR}`` interpolation + complete validation before I/O."""

from ogelkit.config.errors import ConfigError, ConfigErrors
from ogelkit.config.loader import BackendSpec, Config, LayerSpec, load_config, parse_config
from ogelkit.config.schema import Duration, Size, option, options_table

__all__ = [
    "BackendSpec",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "Duration",
    "LayerSpec",
    "Size",
    "load_config",
    "option",
    "options_table",
    "parse_config",
]

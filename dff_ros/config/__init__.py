"""Model config schema and validation (shared by the reference trainer and the master)."""
from dff_ros.config.schema import (ConfigError, LayerSpec, ModelConfig, TrainConfig,  # noqa: F401
                                   load_model_config, parse_model_config)

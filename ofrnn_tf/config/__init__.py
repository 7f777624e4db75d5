"""The experiment configuration (one typed tree) and the flags derived from it."""

from ofrnn_tf.config.experiment import (
    DataConfig, DecodingConfig, ExperimentConfig, FeaturesConfig, ModelConfig, RuntimeConfig,
    StageConfig, TrainConfig, identity_differences)

__all__ = ["DataConfig", "DecodingConfig", "ExperimentConfig", "FeaturesConfig", "ModelConfig",
           "RuntimeConfig", "StageConfig", "TrainConfig", "identity_differences"]

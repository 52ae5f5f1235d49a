"""Training engine: one functional step shared by the Trainer, MAGIC's replay and populations."""

from cnnlab.engine.callbacks import Callback, EarlyStopping, LRSchedulerCallback, ModelCheckpoint
from cnnlab.engine.config import ConfigError, RunConfig, load_config
from cnnlab.engine.run import LoadedRun, fit, load_run, train
from cnnlab.engine.step import StepSettings, TrainState, train_step
from cnnlab.engine.trainer import Trainer, TrainingDiverged

__all__ = [
    "Callback", "ConfigError", "EarlyStopping", "LRSchedulerCallback", "LoadedRun", "ModelCheckpoint", "fit", "RunConfig", "StepSettings",
    "TrainState", "Trainer", "TrainingDiverged", "load_config", "load_run", "train", "train_step",
]

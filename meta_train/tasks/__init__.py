"""Task families of the meta-training harness."""

from .families import (
                       FAMILIES,
                       HELD_OUT,
                       IN_DISTRIBUTION,
                       VALIDATION,
                       VALIDATION_LONG,
                       VALIDATION_TRANSFORMER,
                       Task,
                       TaskConfig,
                       arch_key,
                       build_module,
                       num_activations,
                       num_params,
                       sample_group,
                       sample_task,
)

__all__ = ["FAMILIES", "HELD_OUT", "IN_DISTRIBUTION", "VALIDATION", "VALIDATION_LONG", "VALIDATION_TRANSFORMER", "Task",
           "TaskConfig", "arch_key", "build_module", "num_activations", "num_params", "sample_group", "sample_task"]

"""Task families of the meta-training harness."""

from .families import FAMILIES, HELD_OUT, IN_DISTRIBUTION, Task, TaskConfig, build_module, sample_task

__all__ = ["FAMILIES", "HELD_OUT", "IN_DISTRIBUTION", "Task", "TaskConfig", "build_module", "sample_task"]

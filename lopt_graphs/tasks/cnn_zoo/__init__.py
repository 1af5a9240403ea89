"""CNN zoos (Small CNN Zoo and a variant with sampled architectures) and accuracy prediction from weights."""

from .config import ZOO_KEYS, ZooTaskConfig, load_task_config
from .zoo import ZOO_VERSIONS, CNNArch, Zoo, ZooCNN, batched_forward, build_zoo, load_or_build_zoo, zoo_cache_path

__all__ = ["ZOO_KEYS", "ZOO_VERSIONS", "CNNArch", "Zoo", "ZooCNN", "ZooTaskConfig", "batched_forward", "build_zoo",
           "load_or_build_zoo", "load_task_config", "zoo_cache_path"]

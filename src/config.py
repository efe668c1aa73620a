"""Compose the configs of `conf/` outside a Hydra app: for tests, benchmarks and notebooks."""
from pathlib import Path

from omegaconf import DictConfig, open_dict

import src


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config `python -m src.<config_name> <overrides>` would run with, writing into `output_dir`.

    `${hydra:...}` interpolations keep working (the Hydra config is registered, then dropped from
    the result as in a real run); the tokenization cache goes under `output_dir` too.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(src.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(Path(output_dir) / "cache")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return cfg

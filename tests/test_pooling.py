import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from src.pooling import POOLING_MODES, pool


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_matches_sentence_transformers(mode):
    torch.manual_seed(0)
    tokens = torch.randn(4, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6])
    ours = pool(tokens, mask, mode)
    st_mode = {"mean_sqrt_len": "mean_sqrt_len_tokens"}.get(mode, mode)
    theirs = Pooling(16, pooling_mode=st_mode)({"token_embeddings": tokens, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_padding_never_contributes():
    tokens = torch.randn(1, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    changed = tokens.clone()
    changed[:, 2:] = 1e4
    for mode in POOLING_MODES:
        torch.testing.assert_close(pool(tokens, mask, mode), pool(changed, mask, mode))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="unknown pooling mode 'avg'"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "avg")

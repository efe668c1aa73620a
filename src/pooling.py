"""Token-to-sentence pooling with sentence-transformers' `Pooling` semantics."""
from typing import Literal, get_args

import torch

Pooling = Literal["mean", "cls", "max", "mean_sqrt_len"]
POOLING_MODES: tuple[str, ...] = get_args(Pooling)


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Pool `[batch, seq, dim]` token embeddings into `[batch, dim]` sentence embeddings.

    Padding positions (mask 0) never contribute. `mean_sqrt_len` divides the sum by
    sqrt(number of tokens), as in sentence-transformers.
    """
    if mode == "cls":
        return token_embeddings[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "max":
        # sentence-transformers fills padding with -1e9 before the max
        return token_embeddings.masked_fill(mask == 0, -1e9).max(dim=1).values
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    if mode == "mean":
        return summed / counts
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")

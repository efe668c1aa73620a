"""Training objectives over a batch of sentence-embedding pairs.

Every loss takes `(emb_a, emb_b, scores)`: the two sentences' embeddings `[B, dim]` and the pair's
target score `[B]`. `citation` is what the model card cites for the loss.
"""
import torch
from torch import nn


class CosineSimilarityLoss(nn.Module):
    """MSE between cos(u, v) and the target score: sentence-transformers' CosineSimilarityLoss."""

    citation = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cosine = nn.functional.cosine_similarity(emb_a, emb_b, dim=-1)
        return nn.functional.mse_loss(cosine, scores.to(cosine.dtype))

"""Training objectives over sentence embeddings, one per class, each matching sentence-transformers'
loss of the same name (same formula, defaults, `get_config_dict()` and `citation`).

Every loss is called as `loss(embeddings, scores)`: `embeddings` is the list of text columns'
embeddings `[rows, dim]` (`[a, b]` for scored pairs; `[anchor, positive, negative?]` for triplets)
and `scores` the pairs' target scores `[rows]` (None for triplets). `train_format` says which
training batches a loss needs, and the data module builds those (`data.train_format`).
The model card names a loss by its class, its `get_config_dict()` parameters and its `citation`.
"""
from typing import Any, ClassVar, Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from src.schema import PositiveFloat

SBERT_CITATION = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""


class CosineSimilarityLoss(nn.Module):
    """MSE between cos(u, v) and the target score."""

    train_format: ClassVar[str] = "pairs"
    citation = SBERT_CITATION

    def forward(self, embeddings: Sequence[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        emb_a, emb_b = embeddings
        cosine = F.cosine_similarity(emb_a, emb_b, dim=-1).float()
        return F.mse_loss(cosine, scores.float())

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss_fct": "torch.nn.modules.loss.MSELoss", "cos_score_transformation": "torch.nn.modules.linear.Identity"}


def pairwise_cos_sim(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(emb_a, emb_b, dim=-1)


def pairwise_angle_sim(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """AnglE's similarity |cos + sin| of each pair, dimensions i and i + dim/2 paired as one complex number.

    Dividing two complex vectors and reading the angle of the quotient is, after L2 normalisation,
    the cosine plus a sine term; it keeps a gradient where cosine saturates (near 1 and -1).
    """
    if emb_a.shape[-1] % 2:  # an odd dimension gets a zero partner, as sentence-transformers does
        emb_a, emb_b = F.pad(emb_a, (0, 1)), F.pad(emb_b, (0, 1))
    emb_a, emb_b = F.normalize(emb_a, dim=-1), F.normalize(emb_b, dim=-1)
    cosines = (emb_a * emb_b).sum(dim=-1)
    re_a, im_a = emb_a.chunk(2, dim=-1)
    re_b, im_b = emb_b.chunk(2, dim=-1)
    sines = (im_a * re_b - re_a * im_b).sum(dim=-1)
    return (cosines + sines).abs()


class CoSENTLoss(nn.Module):
    """CoSENT: log(1 + sum over pairs (i, j), (k, l) with target(i, j) > target(k, l) of
    exp(scale * (s(k, l) - s(i, j)))). Only the order of the targets matters, not their values."""

    train_format: ClassVar[str] = "pairs"
    similarity_fct = staticmethod(pairwise_cos_sim)
    citation = """@article{10531646,
    author={Huang, Xiang and Peng, Hao and Zou, Dongcheng and Liu, Zhiwei and Li, Jianxin and Liu, Kay and Wu, Jia and Su, Jianlin and Yu, Philip S.},
    journal={IEEE/ACM Transactions on Audio, Speech, and Language Processing},
    title={CoSENT: Consistent Sentence Embedding via Similarity Ranking},
    year={2024},
    doi={10.1109/TASLP.2024.3402087}
}"""

    def __init__(self, scale: PositiveFloat = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, embeddings: Sequence[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        emb_a, emb_b = embeddings
        similarity = self.scale * self.similarity_fct(emb_a, emb_b).float()  # fp32 under mixed precision
        # [i, j]: how far pair j scores above pair i, counted where i's target is the higher one
        excess = similarity[None, :] - similarity[:, None]
        violations = excess[scores[:, None] > scores[None, :]]
        return torch.logsumexp(torch.cat([violations.new_zeros(1), violations]), dim=0)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": self.similarity_fct.__name__}


class AnglELoss(CoSENTLoss):
    """AnglE: CoSENT over the angle similarity in complex space (`pairwise_angle_sim`)."""

    similarity_fct = staticmethod(pairwise_angle_sim)
    citation = """@inproceedings{li-li-2024-aoe,
    title = "{A}o{E}: Angle-optimized Embeddings for Semantic Textual Similarity",
    author = "Li, Xianming and Li, Jing",
    year = "2024",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2024.acl-long.101/",
    doi = "10.18653/v1/2024.acl-long.101"
}"""


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated in rank order, gradients flowing back to each rank, and where
    this rank's rows start. Ranks may hold different numbers of rows (a short last batch, rows
    without a hard negative), so rows are padded to the longest for the collective, then trimmed."""
    counts = torch.zeros(dist.get_world_size(), dtype=torch.long, device=tensor.device)
    counts[dist.get_rank()] = len(tensor)
    dist.all_reduce(counts)
    padded = F.pad(tensor, (0, 0, 0, int(counts.max()) - len(tensor)))
    parts = dist_fn.all_gather(padded)  # its backward sums each rank's gradients back to their owner
    gathered = torch.cat([part[:count] for part, count in zip(parts, counts.tolist())])
    return gathered, int(counts[: dist.get_rank()].sum())


class MultipleNegativesRankingLoss(nn.Module):
    """In-batch negatives (InfoNCE): each anchor must pick its own positive, by cosine times `scale`,
    among all positives and hard negatives of the batch; cross-entropy over those candidates.

    `symmetric`: also each positive must pick its anchor among all anchors, the two directions
    averaged (sentence-transformers' MultipleNegativesSymmetricRankingLoss). Hard negatives need
    not align with rows: a row without one adds no candidate. `gather_across_ranks` (DDP): the
    candidates are every rank's, so each anchor sees world_size times more negatives.
    """

    train_format: ClassVar[str] = "triplets"
    OORD = """@misc{oord2019representationlearningcontrastivepredictive,
      title={Representation Learning with Contrastive Predictive Coding},
      author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
      year={2019},
      eprint={1807.03748},
      archivePrefix={arXiv},
      primaryClass={cs.LG},
      url={https://arxiv.org/abs/1807.03748},
}"""
    GUNTHER = """@misc{günther2024jinaembeddings28192token,
      title={Jina Embeddings 2: 8192-Token General-Purpose Text Embeddings for Long Documents},
      author={Michael Günther and Jackmin Ong and Isabelle Mohr and Alaeddine Abdessalem and Tanguy Abel and Mohammad Kalim Akram and Susana Guzman and Georgios Mastrapas and Saba Sturua and Bo Wang and Maximilian Werk and Nan Wang and Han Xiao},
      year={2024},
      eprint={2310.19923},
      archivePrefix={arXiv},
      primaryClass={cs.CL},
      url={https://arxiv.org/abs/2310.19923},
}"""

    def __init__(self, scale: PositiveFloat = 20.0, symmetric: bool = False, gather_across_ranks: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.symmetric = symmetric
        self.gather_across_ranks = gather_across_ranks

    @property
    def citation(self) -> str:
        return self.GUNTHER if self.symmetric else self.OORD

    def forward(self, embeddings: Sequence[torch.Tensor], scores: torch.Tensor | None = None) -> torch.Tensor:
        anchor, positive, *negatives = embeddings
        # a zero-row slice keeps every rank's gathers in the autograd graph, so all run the backward
        negative = torch.cat(negatives) if negatives else anchor[:0]
        all_anchor, all_positive, all_negative, offset = anchor, positive, negative, 0
        if self.gather_across_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            all_positive, offset = gather_with_grad(positive)
            all_negative, _ = gather_with_grad(negative)
            if self.symmetric:
                all_anchor, _ = gather_with_grad(anchor)
        targets = torch.arange(offset, offset + len(anchor), device=anchor.device)
        logits = self.scale * cosine_matrix(anchor, torch.cat([all_positive, all_negative])).float()
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            backward_logits = self.scale * cosine_matrix(positive, all_anchor).float()
            loss = (loss + F.cross_entropy(backward_logits, targets)) / 2
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "similarity_fct": "cos_sim",
            "symmetric": self.symmetric,
            "gather_across_ranks": self.gather_across_ranks,
        }

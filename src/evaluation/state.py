"""Helpers for torchmetrics states that are gathered across DDP ranks as lists of rows.

A list state is concatenated by torchmetrics when it syncs ranks; before a sync (one process) it
is still a list of per-batch tensors. Rows can repeat across ranks (a rank given a repeated
sample so that every rank has a batch), so each metric keeps one row per key before computing.
"""
import torch


def cat_state(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor: after a DDP sync torchmetrics leaves a tensor, before it a list."""
    return torch.cat(state) if isinstance(state, list) else state


def one_row_per_key(keys: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Positions of one row per distinct key, the row lowest in `order`, in ascending key order.

    `order` (e.g. the dataset row a copy came from) makes the choice the same whatever the ranks
    and batches, so a DDP run keeps the copies a single process keeps.
    """
    by_order = torch.argsort(order, stable=True)
    rows = by_order[torch.argsort(keys[by_order], stable=True)]
    sorted_keys = keys[rows]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return rows[first]

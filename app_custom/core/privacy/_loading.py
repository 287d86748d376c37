"""A data loader over in-memory tensors that fetches a whole batch with one index operation.

Opacus' ``DPDataLoader`` draws each batch with its ``UniformWithReplacementSampler`` (one Bernoulli draw per
record, which is Poisson sampling) and then fetches the chosen records one by one and stacks them. On a small
model that per-record fetch costs about as much as the training step. PyTorch's ``DataLoader`` calls a dataset's
``__getitems__`` with the whole list of sampled indices when it has one, so ``BatchedTensorDataset`` returns
one tensor index per column and the batch needs no stacking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["BatchedTensorDataset", "first_item", "tensor_data_loader"]


class BatchedTensorDataset(TensorDataset):
    """A ``TensorDataset`` whose ``__getitems__`` returns the whole batch as one item: a tuple of tensors.

    Use it with ``collate_fn=first_item``. An empty index list gives tensors with a batch dimension of 0.
    """

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [tuple(tensor[index] for tensor in self.tensors)]


def first_item(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Collate the one-item list ``BatchedTensorDataset.__getitems__`` returns into its batch."""
    return batch[0]


def tensor_data_loader(*tensors: torch.Tensor, batch_size: int) -> DataLoader:
    """Return a ``DataLoader`` over ``tensors`` (one row per record) that fetches each batch in one step.

    Pass it to ``make_private``, which replaces its sampler with Opacus' Poisson sampler and keeps the dataset and
    ``collate_fn``.

    Privacy: the batches are drawn exactly as for a ``DataLoader`` over a ``TensorDataset``, by Opacus'
    ``UniformWithReplacementSampler`` (each record joins a batch with probability sample_rate, independently), so
    the RDP accountant's Poisson-sampling assumption holds. Only the fetch of the drawn rows changes.
    """
    return DataLoader(BatchedTensorDataset(*tensors), batch_size=batch_size, collate_fn=first_item)

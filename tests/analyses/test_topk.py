"""The running top k's ranking against torch's own topk and a sort by (value, index)."""

from __future__ import annotations

import torch

from deconv.analyses.topk import _key, _largest


def test_the_k_largest_by_groups_are_topks_columns_ties_to_the_lower_index() -> None:
    g = torch.Generator().manual_seed(0)
    for m in (1, 5, 9, 36, 37, 40, 500, 513):
        values = torch.randint(-3, 4, (7, m), generator=g).float()  # many ties: the index decides
        values[0] = -0.0  # -0.0 ties with 0.0
        index = torch.randperm(m, generator=g)
        keys = _key(values, index)
        k = min(9, m)
        chosen = _largest(keys, k)
        assert torch.equal(chosen, keys.topk(k, dim=1).indices), m
        for row in range(7):  # an independent order: by value, then by the lower index
            order = sorted(range(m), key=lambda j: (-float(values[row, j]), int(index[j])))
            assert chosen[row].tolist() == order[:k], (m, row)

"""The sparse products of the step (bag sums in chunks) against dense references."""

from __future__ import annotations

import pytest
import torch

from workbench.sae.bags import bag_sum_, column_order


def _bags(n_rows=37, n_table=23, width=5, seed=0):
    """Random bags over a table, some of them empty (the first, the last, some between)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 4, (n_rows,), generator=g)
    sizes[0], sizes[-1], sizes[n_rows // 2] = 0, 0, 0
    ptr = torch.zeros(n_rows + 1, dtype=torch.long)
    ptr[1:] = sizes.cumsum(0)
    n = int(ptr[-1])
    idx = torch.randint(0, n_table, (n,), generator=g)
    weights = torch.randn(n, generator=g)
    table = torch.randn(n_table, width, generator=g)
    rows = torch.repeat_interleave(torch.arange(n_rows), sizes)
    dense = torch.zeros(n_rows, n_table).index_put_((rows, idx), weights, accumulate=True)
    return table, idx, weights, ptr, dense @ table


@pytest.mark.parametrize("chunk_elems", [1, 5, 7 * 5, 1 << 19])  # one row per call .. one call
def test_bag_sum_matches_dense_product(chunk_elems):
    table, idx, weights, ptr, want = _bags()
    out = torch.full_like(want, float("nan"))  # every row must be written, empty ones as 0
    bag_sum_(out, table, idx, weights, ptr, chunk_elems=chunk_elems)
    torch.testing.assert_close(out, want)
    out_t = torch.full_like(want.T, float("nan"))
    bag_sum_(out_t, table, idx, weights, ptr, transposed=True, chunk_elems=chunk_elems)
    torch.testing.assert_close(out_t, want.T)


def test_bag_sum_refuses_a_wrong_output_shape():
    table, idx, weights, ptr, want = _bags()
    with pytest.raises(ValueError, match=r"expected \(5, 37\)"):
        bag_sum_(torch.empty_like(want), table, idx, weights, ptr, transposed=True)


def test_column_order_lists_entries_by_latent_stably():
    cols = torch.tensor([3, 1, 3, 0, 1, 3])
    by = column_order(cols, 5)
    assert by.order.tolist() == [3, 1, 4, 0, 2, 5]
    assert by.crow.tolist() == [0, 1, 3, 3, 6, 6]
    assert by.counts.tolist() == [1, 2, 0, 3, 0]

"""latentquant::label_encode (csrc/cpu/label_encode.cpp) against its oracle (torch.unique per column): many
shapes and dtypes, ties, -0.0, integer extremes, the small-range table and the hash (with its growth), NaN
and shape errors, opcheck, torch.compile, and the metrics' encoders built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_utils import poisoned_allocations

from latentquant.metrics._inputs import encode_columns
from latentquant.ops import _registry
from latentquant.ops.label_encode import label_encode
from latentquant.reference.label_encode import label_encode_ref

needs_kernel = pytest.mark.skipif(
    not _registry.has_kernel("label_encode", "CPU"), reason="latentquant._C not built"
)

# (N, C): empty, one element, odd sizes, a zero-column input.
SHAPES = [(0, 3), (1, 1), (2, 5), (7, 2), (1000, 3), (4097, 1), (5, 0)]
DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def random_column_set(shape, dtype, seed):
    """Columns of few values (ties: the table or a hash of ~K values), of many (all distinct: the hash grows
    past 1,024 entries), and wide-range integers (past the table: the hash)."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        few = torch.randint(-4, 5, shape, generator=g).to(torch.float64) / 4
        many = torch.randn(shape, generator=g, dtype=torch.float64) * 100
        x = torch.where(torch.arange(c) % 2 == 0, few, many).to(dtype)
        return x
    info = torch.iinfo(dtype)
    low, high = max(info.min, -50), min(info.max, 50)
    x = torch.randint(low, high + 1, shape, generator=g).to(dtype)
    if dtype == torch.int64 and c > 1:
        x[:, 1] = torch.randint(-(2**62), 2**62, (n,), generator=g)  # beyond the table
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch_unique(shape, dtype):
    x = random_column_set(shape, dtype, seed=len(DTYPES) * shape[0] + shape[1])
    with poisoned_allocations():  # an element the kernel forgets to write shows up
        codes, counts = label_encode(x)
    want_codes, want_counts = label_encode_ref(x)
    assert codes.dtype == torch.int64 and counts.dtype == torch.int64
    assert tuple(codes.shape) == tuple(shape) and tuple(counts.shape) == (shape[1],)
    assert torch.equal(codes, want_codes) and torch.equal(counts, want_counts)


def test_all_distinct_values_grow_the_hash():
    x = torch.randperm(20_000, generator=torch.Generator().manual_seed(1)).double()[:, None] * 1.5 - 7.25
    codes, counts = label_encode(x)
    assert counts.tolist() == [20_000]
    assert torch.equal(codes, label_encode_ref(x)[0])


def test_negative_zero_is_zero_and_integer_extremes():
    z = torch.tensor([[0.0], [-0.0], [1.0], [-0.0], [-1.0]])
    assert label_encode(z)[0].flatten().tolist() == [1, 1, 2, 1, 0]
    assert torch.equal(label_encode(z)[0], label_encode_ref(z)[0])
    big = torch.tensor([[2**62], [-(2**62)], [2**63 - 1], [-(2**63)], [0], [2**63 - 1]])
    codes, counts = label_encode(big)
    assert codes.flatten().tolist() == [3, 1, 4, 0, 2, 4] and counts.tolist() == [5]


def test_non_contiguous_input():
    x = random_column_set((300, 6), torch.float64, 3)
    for view in (x.T.contiguous().T, x[::2], x[:, ::3]):
        assert not view.is_contiguous() or view is x
        got = label_encode(view)
        want = label_encode_ref(view)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_does_not_depend_on_the_thread_count():
    x = random_column_set((5000, 8), torch.float64, 4)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = label_encode(x)
        torch.set_num_threads(max(2, previous))
        many = label_encode(x)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@pytest.mark.parametrize("oracle", [False, True], ids=["kernel", "oracle"])
def test_errors_name_the_problem(oracle, monkeypatch):
    if oracle:
        from latentquant.ops import label_encode as module

        monkeypatch.setattr(module, "_KERNEL_KEYS", frozenset())
    x = torch.zeros(4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"label_encode: x contains NaN \(columns \[1\]\)"):
        label_encode(x)
    with pytest.raises(ValueError, match=r"label_encode: x must have 2 dimensions \(N, C\), got shape \[4\]"):
        label_encode(torch.zeros(4))
    with pytest.raises(ValueError, match="label_encode: x must be real"):
        label_encode(torch.zeros(4, 2, dtype=torch.complex64))


@needs_kernel
def test_op_errors():
    with pytest.raises(ValueError, match="label_encode: x must be float64 or int64"):
        torch.ops.latentquant.label_encode(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="label_encode: x must have 2 dimensions"):
        torch.ops.latentquant.label_encode(torch.zeros(3, dtype=torch.float64))


@needs_kernel
def test_opcheck():
    for x in (
        random_column_set((300, 4), torch.float64, 5).to(torch.float64),
        random_column_set((257, 3), torch.int64, 6),
        torch.zeros(0, 2, dtype=torch.int64),
    ):
        torch.library.opcheck(torch.ops.latentquant.label_encode.default, (x,))


def test_torch_compile_fullgraph():
    x = random_column_set((500, 3), torch.float64, 7)

    def f(x):
        codes, counts = label_encode(x)
        return codes * 2, counts + 1

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    want = label_encode_ref(x)
    assert torch.equal(got[0], want[0] * 2) and torch.equal(got[1], want[1] + 1)


@pytest.mark.parametrize(
    "values",
    [
        np.array([["b", "x"], ["a", "x"], ["b", "y"]]),  # strings: np.unique
        np.array([[2**64 - 1], [3], [2**63]], dtype=np.uint64),  # beyond int64: np.unique
        np.array([[0.5, 3], [0.25, 3], [0.5, -1]], dtype=np.float32),
        np.array([[True], [False], [True]]),
    ],
    ids=["strings", "uint64", "float32", "bool"],
)
def test_encode_columns_of_numpy_arrays(values):
    codes, counts = encode_columns(values)
    for j in range(values.shape[1]):
        unique, inverse = np.unique(values[:, j], return_inverse=True)
        assert codes[:, j].tolist() == inverse.reshape(-1).tolist() and counts[j] == len(unique)

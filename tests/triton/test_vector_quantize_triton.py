"""Triton vector_quantize launchers against vector_quantize_ref: compiled on CUDA tensors when a GPU is
present, else under the interpreter on CPU tensors."""

import pytest
import quant_checks
import torch
from triton_ops import DEVICE, OPS

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lead", "c", "k"), [((1,), 1, 1), ((9,), 3, 5), ((2, 21), 7, 70), ((40,), 33, 13)])
def test_vector_quantize_triton(lead, c, k, dtype):
    quant_checks.check_vector_quantize(OPS, lead, c, k, dtype, dtype, DEVICE, seed=c * 13 + k)


@pytest.mark.parametrize(
    ("dtype", "cdtype"), [(torch.float16, torch.float32), (torch.float32, torch.float64)]
)
def test_vector_quantize_triton_mixed_dtypes(dtype, cdtype):
    quant_checks.check_vector_quantize(OPS, (17,), 6, 9, dtype, cdtype, DEVICE, seed=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vector_quantize_triton_strided_and_ties(dtype):
    quant_checks.check_vector_quantize(
        OPS, (3, 7), 5, 66, dtype, dtype, DEVICE, strided=True, ties=True, seed=6
    )

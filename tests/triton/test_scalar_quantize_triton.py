"""Triton scalar_quantize launchers against scalar_quantize_ref: compiled on CUDA tensors when a GPU is
present, else under the interpreter on CPU tensors."""

import pytest
import quant_checks
import torch
from triton_ops import DEVICE, OPS

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lead", "d", "k"), [((1,), 1, 1), ((7,), 5, 10), ((3, 11), 3, 4), ((300,), 6, 9), ((0,), 4, 3)]
)
def test_scalar_quantize_triton(lead, d, k, dtype):
    quant_checks.check_scalar_quantize(OPS, lead, d, k, dtype, dtype, DEVICE, seed=d * 31 + k)


@pytest.mark.parametrize(
    ("dtype", "vdtype"), [(torch.float16, torch.float32), (torch.float32, torch.float64)]
)
def test_scalar_quantize_triton_mixed_dtypes(dtype, vdtype):
    quant_checks.check_scalar_quantize(OPS, (2, 9), 4, 7, dtype, vdtype, DEVICE, seed=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scalar_quantize_triton_strided_and_ties(dtype):
    quant_checks.check_scalar_quantize(
        OPS, (3, 5), 6, 5, dtype, dtype, DEVICE, strided=True, ties=True, seed=2
    )

"""Triton latent_quantize launchers against latent_quantize_ref and its math: compiled on CUDA tensors when a GPU is
present, else under the interpreter on CPU tensors."""

import pytest
import quant_checks
import torch
from triton_ops import DEVICE, OPS

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lead", "d", "k"), [((1,), 1, 1), ((7,), 5, 10), ((2, 13), 3, 4), ((260,), 12, 10)])
def test_latent_quantize_triton(lead, d, k, dtype):
    quant_checks.check_latent_quantize(OPS, lead, d, k, dtype, dtype, DEVICE, seed=d * 17 + k)


# Not bfloat16 z with a float32 codebook here: the interpreter truncates float32 -> bfloat16 where the GPU
# rounds to nearest (tests/test_cuda_kernels.py covers that pair on the GPU).
@pytest.mark.parametrize(
    ("dtype", "vdtype"), [(torch.float16, torch.float32), (torch.float32, torch.float64)]
)
def test_latent_quantize_triton_mixed_dtypes(dtype, vdtype):
    quant_checks.check_latent_quantize(OPS, (11,), 5, 6, dtype, vdtype, DEVICE, seed=9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_latent_quantize_triton_strided_and_ties(dtype):
    quant_checks.check_latent_quantize(
        OPS, (4, 3), 5, 7, dtype, dtype, DEVICE, strided=True, ties=True, seed=4
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_quantize_triton_matches_reference_autograd(dtype):
    quant_checks.check_latent_matches_reference_autograd(OPS, dtype, DEVICE)


def test_triton_empty_inputs():
    quant_checks.check_empty(OPS, DEVICE)


@pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning"
)  # numpy, inside the interpreter
def test_triton_not_finite_raises():
    quant_checks.check_not_finite(OPS, DEVICE)


def test_triton_bad_arguments_name_the_op():
    quant_checks.check_bad_arguments(OPS, DEVICE)

"""FSQ and the vector-quantize-pytorch-compatible LatentQuantizer: same outputs as vqp, drop-in training."""

import pytest
import torch

from latentquant.nn import FSQ, LatentQuantizer

vqp = pytest.importorskip("vector_quantize_pytorch")


def _pair(levels, dim, seed=0):
    torch.manual_seed(seed)
    theirs = vqp.FSQ(levels=levels, dim=dim)
    ours = FSQ(levels, dim=dim)
    ours.load_state_dict(theirs.state_dict())  # same projection weights (same key names)
    return ours, theirs


@pytest.mark.parametrize(
    "levels, dim, shape",
    [
        ([8, 5, 5, 5], None, (4, 50, 4)),  # (B, N, D)
        ([8, 5, 5, 5], 16, (4, 50, 16)),  # learned projections
        ([7, 5, 5, 5, 5], 12, (2, 12, 6, 5)),  # image, channel first (detected: 4 dims)
        ([8, 6, 5], None, (2, 3, 2, 4, 4)),  # video (B, C, T, H, W)
    ],
)
def test_fsq_matches_vqp(levels, dim, shape):
    ours, theirs = _pair(levels, dim)
    z = (3 * torch.randn(shape, generator=torch.Generator().manual_seed(1))).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    out, idx = ours(z)
    ref_out, ref_idx = theirs(z2)
    assert out.shape == ref_out.shape and idx.shape == ref_idx.shape
    assert torch.equal(out, ref_out)
    assert torch.equal(idx, ref_idx.long()) and idx.dtype == torch.int64
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    (out * w).sum().backward()
    (ref_out * w).sum().backward()
    assert torch.equal(z.grad, z2.grad)
    torch.testing.assert_close(ours.indices_to_codes(idx), theirs.indices_to_codes(ref_idx), rtol=0, atol=0)
    torch.testing.assert_close(ours.indices_to_codes(idx), out.detach(), rtol=0, atol=0)
    assert ours.codebook_size == theirs.codebook_size


def test_fsq_codes_are_every_grid_point_and_indices_are_mixed_radix():
    q = FSQ([8, 5, 3])
    z = torch.linspace(-6, 6, 3001)[:, None].expand(-1, 3)
    codes, idx = q(z)
    for d, n in enumerate([8, 5, 3]):
        expected = (torch.arange(n) - n // 2) / (n // 2)
        torch.testing.assert_close(torch.unique(codes[:, d]), expected)
    level = q.indices_to_level_indices(idx)
    assert torch.equal(idx, level[:, 0] + 8 * level[:, 1] + 40 * level[:, 2])
    assert torch.equal(q.codes_to_indices(codes), idx)
    assert q.codebook_size == 120 and int(idx.max()) < 120


def test_fsq_low_precision_keeps_dtype_and_matches_vqp():
    ours, theirs = _pair([8, 5, 5, 5], None)
    z = torch.randn(3, 7, 4).to(torch.bfloat16)
    out, idx = ours(z)
    ref_out, ref_idx = theirs(z)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref_out) and torch.equal(idx, ref_idx.long())


def test_fsq_errors():
    with pytest.raises(ValueError, match="at least 3 value"):
        FSQ([8, 2, 5])
    with pytest.raises(ValueError, match="expected 4 features"):
        FSQ([8, 5, 5, 5])(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        FSQ([5, 5])(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"must be in \[0, 25\)"):
        FSQ([5, 5]).indices_to_codes(torch.tensor([25]))


def test_latent_quantizer_vqp_style_layouts_and_codes():
    torch.manual_seed(0)
    q = LatentQuantizer(levels=[5, 5, 8], dim=16)
    assert q.num_values == [5, 5, 8] and q.codebook_size == 200 and q.flat_indices
    assert isinstance(q.project_in, torch.nn.Linear) and q.project_in.weight.shape == (3, 16)
    for shape, idx_shape in [((6, 16), (6,)), ((2, 7, 16), (2, 7)), ((2, 16, 4, 4), (2, 4, 4))]:
        z = torch.randn(shape)
        out, idx, loss = q(z)
        assert out.shape == shape and idx.shape == idx_shape and loss.dim() == 0
        torch.testing.assert_close(q.indices_to_codes(idx), out, rtol=0, atol=0)
    # the flat code is the mixed radix of the per-latent ranks, first latent least significant
    per_latent = LatentQuantizer(levels=[5, 5, 8], dim=16, flat_indices=False)
    per_latent.load_state_dict(q.state_dict())
    z = torch.randn(2, 16, 4, 4)
    _, flat, _ = q(z)
    _, ranks, _ = per_latent(z)
    assert ranks.shape == (2, 3, 4, 4)
    r = ranks.movedim(1, -1)
    assert torch.equal(flat, r[..., 0] + 5 * r[..., 1] + 25 * r[..., 2])
    assert torch.equal(q.flat_to_indices(flat), r) and torch.equal(q.indices_to_flat(r), flat)
    torch.testing.assert_close(per_latent.indices_to_codes(ranks), q.indices_to_codes(flat), rtol=0, atol=0)


def test_latent_quantizer_vqp_argument_names_and_flat_limits():
    q = LatentQuantizer(levels=4, num_latents=3, quantization_loss_weight=0.1, commitment_loss_weight=0.2)
    assert q.num_values == [4, 4, 4] and (q.quantization_weight, q.commitment_weight) == (0.1, 0.2)
    assert LatentQuantizer(levels=[5, 5]).quantization_weight == 0.01  # the paper's default, not vqp's 0.1
    with pytest.raises(ValueError, match="num_latents is needed"):
        LatentQuantizer(levels=4)
    with pytest.raises(ValueError, match="not both"):
        LatentQuantizer(3, num_values=5, levels=[5, 5, 5])
    with pytest.raises(ValueError, match="not both"):
        LatentQuantizer(levels=[5, 5], quantization_weight=0.1, quantization_loss_weight=0.1)
    big = LatentQuantizer(1024, 256)  # per-latent indices: any size
    assert big.codebook_size == 256**1024
    with pytest.raises(ValueError, match="2\\*\\*63 - 1"):
        LatentQuantizer(1024, 256, flat_indices=True)


def test_drop_in_replacement_for_vqp_layers_trains():
    """A small autoencoder written against vqp's LatentQuantize and FSQ trains unchanged with ours swapped in."""

    class Model(torch.nn.Module):
        def __init__(self, quantizer):
            super().__init__()
            self.enc = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.quantizer = quantizer
            self.dec = torch.nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, x):
            out = self.quantizer(self.enc(x))  # (B, 16, H, W): channel first, detected from 4 dims
            z_hat, indices = out[0], out[1]
            loss = out[2] if len(out) == 3 else z_hat.new_zeros(())
            return torch.nn.functional.mse_loss(self.dec(z_hat), x) + loss, indices

    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    makers = {
        "LatentQuantize": (
            lambda: vqp.LatentQuantize(levels=[5, 5, 8], dim=16),
            lambda: LatentQuantizer(levels=[5, 5, 8], dim=16),
        ),
        "FSQ": (lambda: vqp.FSQ(levels=[8, 5, 5, 5], dim=16), lambda: FSQ(levels=[8, 5, 5, 5], dim=16)),
    }
    for theirs, ours in makers.values():
        shapes = []
        for make in (theirs, ours):
            torch.manual_seed(3)
            model = Model(make())
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            losses = []
            for _ in range(30):
                loss, indices = model(x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            shapes.append(indices.shape)
            assert losses[-1] < 0.7 * losses[0]
        assert shapes[0] == shapes[1] == (8, 8, 8)

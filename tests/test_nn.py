"""The drop-in layers: LatentQuantizer, GlobalLatentQuantizer, VectorQuantizer."""

import pytest
import torch

from latentquant.nn import GlobalLatentQuantizer, LatentQuantizer, VectorQuantizer


def test_initial_values_linspace_every_size():
    q = LatentQuantizer(4, [1, 2, 5, 10])
    cb = q.sorted_codebook()
    assert cb[0, 0].item() == 0.0
    torch.testing.assert_close(cb[1, :2], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(cb[2, :5], torch.linspace(-0.5, 0.5, 5))
    torch.testing.assert_close(cb[3], torch.linspace(-0.5, 0.5, 10))


def test_forward_contract_and_decoding():
    torch.manual_seed(0)
    q = LatentQuantizer(6, 10)
    z = torch.randn(32, 6)
    z_hat, idx, loss = q(z)
    assert z_hat.shape == idx.shape == z.shape and loss.dim() == 0
    torch.testing.assert_close(q.indices_to_values(idx), z_hat)
    # nearest value of linspace(-0.5, 0.5, 10): round((z + 0.5) * 9), clamped
    expected = ((z + 0.5) * 9).round().clamp(0, 9).long()
    assert torch.equal(idx, expected)


def test_values_learn_under_the_quantization_loss():
    """Unlike vector-quantize-pytorch's LatentQuantize, the values receive gradient and move toward the data."""
    torch.manual_seed(1)
    q = LatentQuantizer(3, 5, quantization_weight=1.0, commitment_weight=0.0)
    z = 0.2 + 0.01 * torch.randn(256, 3)  # every latent near 0.2; nearest initial value is 0.25
    before = q.values.detach().clone()
    # grad of the selected value = 2 * qw * (v - mean z) * 256 / (256 * 3): lr 1.0 contracts the gap by 1/3 a step
    opt = torch.optim.SGD(q.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        _, _, loss = q(z)
        loss.backward()
        opt.step()
    moved = (q.values.detach() - before).abs()
    assert bool((moved[:, 3] > 0.03).all())  # the selected value moved toward 0.2 ...
    torch.testing.assert_close(q.values.detach()[:, 3], z.mean(0), atol=5e-3, rtol=0)
    assert torch.count_nonzero(moved[:, [0, 1, 2, 4]]) == 0  # ... the unused ones did not


def test_rank_indices_stay_ordinal_when_values_cross():
    q = LatentQuantizer(1, 3)
    with torch.no_grad():
        q.values.copy_(torch.tensor([[0.9, -0.3, 0.1]]))
    z_hat, idx, _ = q(torch.tensor([[0.85], [-0.2], [0.12]]))
    assert idx.flatten().tolist() == [2, 0, 1]
    torch.testing.assert_close(q.indices_to_values(idx), z_hat)


def test_ragged_codebooks():
    q = LatentQuantizer(3, [2, 7, 3])
    z = torch.linspace(-2, 2, 90).reshape(30, 3)
    _, idx, _ = q(z)
    assert idx[:, 0].max() <= 1 and idx[:, 1].max() <= 6 and idx[:, 2].max() <= 2
    assert idx[:, 1].max() == 6
    z_hat, idx, loss = q(z)
    loss.backward()
    assert torch.count_nonzero(q.values.grad[0, 2:]) == 0  # the padding tail gets no gradient
    s = q.sample(4000, generator=torch.Generator().manual_seed(0))
    for d, n in enumerate([2, 7, 3]):
        assert len(torch.unique(s[:, d])) == n


def test_sample_is_uniform_over_values():
    q = LatentQuantizer(2, 4)
    s = q.sample(20000, generator=torch.Generator().manual_seed(0))
    _, counts = torch.unique(s[:, 0], return_counts=True)
    assert counts.shape == (4,) and bool(((counts / 20000 - 0.25).abs() < 0.02).all())


def test_channel_first():
    q = LatentQuantizer(4, 5, channel_first=True)
    z = torch.randn(2, 4, 3, 3)
    z_hat, idx, _ = q(z)
    assert z_hat.shape == idx.shape == z.shape
    ref, ref_idx, _ = LatentQuantizer(4, 5, channel_first=False)(z.movedim(1, -1))  # channel-last 4-D
    torch.testing.assert_close(z_hat, ref.movedim(-1, 1))
    torch.testing.assert_close(q.indices_to_values(idx), z_hat)


@pytest.mark.parametrize("latents, values", [(12, 10), (1024, 256)])
def test_paper_size_and_far_beyond(latents, values):
    q = LatentQuantizer(latents, values)
    z = torch.randn(64, latents, requires_grad=True)
    z_hat, idx, loss = q(z)
    (z_hat.sum() + loss).backward()
    assert z.grad.shape == z.shape and q.values.grad.shape == (latents, values)
    assert int(idx.max()) < values


def test_codebook_parameters_and_frozen_values():
    q = LatentQuantizer(3, 4)
    assert q.codebook_parameters() == [q.values]
    frozen = LatentQuantizer(3, 4, optimize_values=False)
    assert frozen.codebook_parameters() == []


def test_global_codebook_is_shared():
    q = GlobalLatentQuantizer(5, 4, quantization_weight=1.0)
    z = torch.randn(16, 5)
    z_hat, idx, loss = q(z)
    assert q.values.shape == (4,)
    loss.backward()
    assert q.values.grad.shape == (4,) and torch.count_nonzero(q.values.grad) > 0
    torch.testing.assert_close(q.indices_to_values(idx), z_hat)


def test_layer_errors():
    with pytest.raises(ValueError, match="expected 3 features"):
        LatentQuantizer(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_values has 2 entries for 3 latents"):
        LatentQuantizer(3, [2, 3])
    with pytest.raises(ValueError, match=r"at least 1 value\(s\).*num_values=\[0, 3\]"):
        LatentQuantizer(2, [0, 3])
    with pytest.raises(ValueError, match="out of range"):
        LatentQuantizer(2, 3).indices_to_values(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        LatentQuantizer(2)(torch.tensor([[0.0, float("nan")]]))


def test_vector_quantizer_gradient_learning():
    torch.manual_seed(2)
    vq = VectorQuantizer(4, 8)
    z = torch.randn(128, 4)
    z_hat, idx, loss = vq(z)
    assert z_hat.shape == z.shape and idx.shape == (128,)
    loss.backward()
    assert vq.codebook.grad is not None and torch.count_nonzero(vq.codebook.grad) > 0
    torch.testing.assert_close(vq.indices_to_values(idx), z_hat)


def test_vector_quantizer_ema_moves_codes_to_cluster_means():
    torch.manual_seed(3)
    vq = VectorQuantizer(2, 2, ema=True, decay=0.5)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        vq.ema_embed_sum.copy_(vq.codebook)
    z = torch.cat([torch.tensor([[2.0, 1.0]]).expand(50, 2), torch.tensor([[-2.0, -1.0]]).expand(50, 2)])
    for _ in range(30):
        vq(z)
    torch.testing.assert_close(
        vq.codebook.detach(), torch.tensor([[2.0, 1.0], [-2.0, -1.0]]), atol=1e-3, rtol=1e-3
    )
    assert vq.codebook_parameters() == []


def test_vector_quantizer_dead_code_restart():
    torch.manual_seed(4)
    vq = VectorQuantizer(3, 16, dead_code_threshold=0.5, decay=0.5)
    with torch.no_grad():
        vq.codebook[1:] = 100.0  # unreachable codes: all data goes to code 0
    z = torch.randn(64, 3)
    for _ in range(3):
        vq(z)
    assert bool((vq.codebook.detach()[1:].abs() < 10).all())  # restarted onto data points
    assert len(torch.unique(vq(z)[1])) > 1


def test_vector_quantizer_channel_first():
    vq = VectorQuantizer(8, 16, channel_first=True)
    z = torch.randn(2, 8, 3, 5)
    z_hat, idx, _ = vq(z)
    assert z_hat.shape == z.shape and idx.shape == (2, 3, 5)
    torch.testing.assert_close(vq.indices_to_values(idx), z_hat)


@pytest.mark.parametrize("layer", ["ragged", "global"])
def test_differentiable_sample_sends_gradient_to_exactly_the_drawn_values(layer):
    if layer == "ragged":
        q = LatentQuantizer(3, [4, 2, 5])
        with torch.no_grad():  # crossed values: rank order differs from storage order
            q.values.copy_(
                torch.tensor([[0.3, -0.7, 0.9, 0.1, 0.1], [0.2, -0.2, 0, 0, 0], [0.5, 0.4, -0.1, 0.8, -0.9]])
            )
    else:
        q = GlobalLatentQuantizer(3, 8)
        with torch.no_grad():
            q.values.copy_(torch.tensor([0.3, -0.7, 0.9, 0.1, 0.6, -0.4, 0.0, -0.2]))
    n = 2  # few draws: some values are never drawn and must get exactly zero gradient
    plain = q.sample(n, generator=torch.Generator().manual_seed(5))
    s = q.sample(n, generator=torch.Generator().manual_seed(5), differentiable=True)
    assert not plain.requires_grad and s.requires_grad
    assert torch.equal(plain, s.detach())  # same indices for the same generator either way
    w = torch.randn(n, 3, generator=torch.Generator().manual_seed(6))
    (s * w).sum().backward()
    # expected: every draw adds its weight to the stored entry whose value it took
    expected = torch.zeros_like(q.values)
    vals = q.values.detach()
    for i in range(n):
        for d in range(3):
            row = vals[d, : q.num_values[d]] if layer == "ragged" else vals
            k = int((row == s[i, d].detach()).nonzero()[0])
            if layer == "ragged":
                expected[d, k] += w[i, d]
            else:
                expected[k] += w[i, d]
    torch.testing.assert_close(q.values.grad, expected, rtol=0, atol=1e-6)
    assert torch.count_nonzero(expected == 0) > 0


@pytest.mark.parametrize("ema", [False, True])
def test_vector_quantizer_output_dtype_under_bf16_autocast(ema):
    torch.manual_seed(7)
    enc = torch.nn.Linear(6, 4)
    vq = VectorQuantizer(4, 8, ema=ema)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = enc(torch.randn(16, 6))
        z_hat, idx, loss = vq(z)
    assert z.dtype == torch.bfloat16 and z_hat.dtype == torch.bfloat16  # float32 with ema before the fix
    torch.testing.assert_close(z_hat, vq.codebook.detach()[idx].to(torch.bfloat16), rtol=0, atol=0)


def test_vector_quantizer_argument_checks():
    with pytest.warns(UserWarning, match="decay=0.9 has no effect without ema=True"):
        VectorQuantizer(4, 8, decay=0.9)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VectorQuantizer(4, 8, ema=True, decay=0.9)
        VectorQuantizer(4, 8, decay=0.9, dead_code_threshold=0.1)  # decay drives the usage counts
        VectorQuantizer(4, 8)
    for eps in (0.0, -1e-5):
        with pytest.raises(ValueError, match=f"eps .* must be > 0, got {eps}"):
            VectorQuantizer(4, 8, ema=True, eps=eps)


def test_vector_quantizer_image_layout_is_detected():
    vq = VectorQuantizer(8, 16)
    z = torch.randn(2, 8, 3, 5)
    z_hat, idx, _ = vq(z)
    assert z_hat.shape == z.shape and idx.shape == (2, 3, 5)
    torch.testing.assert_close(vq.indices_to_values(idx), z_hat)


def test_ragged_sizes_are_checked_on_load():
    saved = LatentQuantizer(3, [5, 5, 8]).state_dict()
    assert saved["num_values_per_latent"].tolist() == [5, 5, 8]
    with pytest.raises(
        RuntimeError, match=r"num_values=\[5, 5, 8\] but this layer was built with num_values=\[8, 5, 5\]"
    ):
        LatentQuantizer(3, [8, 5, 5]).load_state_dict(saved)
    same = LatentQuantizer(3, [5, 5, 8])
    same.load_state_dict(saved)
    legacy = {"values": saved["values"]}  # a state from before the sizes were stored still loads
    LatentQuantizer(3, [5, 5, 8]).load_state_dict(legacy)


def test_wrong_feature_size_is_named_with_the_layout_for_lq_and_fsq():
    from latentquant.nn import FSQ

    cases = [
        (LatentQuantizer(4, 5), "LatentQuantizer"),
        (GlobalLatentQuantizer(4, 5), "GlobalLatentQuantizer"),
        (FSQ([5, 5, 5, 5]), "FSQ"),
    ]
    for layer, name in cases:
        with pytest.raises(
            ValueError, match=rf"^{name}: expected 4 features in the last dimension, got .*\(2, 3\)"
        ):
            layer(torch.randn(2, 3))
        with pytest.raises(
            ValueError, match=rf"^{name}: expected 4 features in the channel \(dim 1\) dimension"
        ):
            layer(torch.randn(2, 3, 4, 4))

"""latentquant.data: procedural datasets, real-file loaders, the factor-sweep grid and `latentquant data show`."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from latentquant.data import (
    DSprites,
    DSpritesFile,
    GroundTruthDataset,
    MPI3DFile,
    Shapes3D,
    Shapes3DFile,
    dsprites,
    factor_sweep,
    get_dataset,
    shapes3d,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def s3d() -> Shapes3D:
    return Shapes3D()


@pytest.fixture(scope="module")
def dsp() -> DSprites:
    return DSprites()


@pytest.fixture(params=["shapes3d", "dsprites"])
def procedural(request, s3d, dsp) -> GroundTruthDataset:
    return s3d if request.param == "shapes3d" else dsp


# ------------------------------------------------------------------------------------------ grid + indexing
def test_factor_grids_match_the_design():
    s, d = Shapes3D(), DSprites()
    assert s.factor_names == ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
    assert s.factor_sizes == (10, 10, 10, 8, 4, 15) and len(s) == 480_000 and s.image_shape == (3, 64, 64)
    assert d.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert d.factor_sizes == (3, 6, 40, 32, 32) and len(d) == 737_280 and d.image_shape == (1, 64, 64)
    np.testing.assert_allclose(s.factor_values[0], np.arange(10) / 10)  # hue 1.0 would repeat hue 0.0
    np.testing.assert_allclose(d.factor_values[1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])


def test_mixed_radix_round_trip_and_order(dsp):
    everything = dsp.index_to_factors(torch.arange(len(dsp)))
    assert everything.dtype == torch.int64 and everything.shape == (len(dsp), 5)
    # every grid point exactly once, first factor slowest, last fastest
    assert torch.equal(dsp.factors_to_index(everything), torch.arange(len(dsp)))
    assert torch.equal(everything[1], torch.tensor([0, 0, 0, 0, 1]))
    assert torch.equal(everything[32], torch.tensor([0, 0, 0, 1, 0]))
    assert torch.equal(everything[-1], torch.tensor([2, 5, 39, 31, 31]))
    # a grid point's index written out by hand
    assert int(dsp.factors_to_index([[1, 2, 3, 4, 5]])[0]) == (((1 * 6 + 2) * 40 + 3) * 32 + 4) * 32 + 5


def test_factor_and_index_validation(s3d):
    with pytest.raises(ValueError, match=r"object_hue must be in \[0, 10\), got 10"):
        s3d.check_factors([[0, 0, 10, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"expected shape \(N, 6\).*got \(2, 5\)"):
        s3d.images_for(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer dtype"):
        s3d.images_for(torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 480000\)"):
        s3d.index_to_factors([480_000])
    with pytest.raises(IndexError):
        s3d[len(s3d)]
    assert s3d.images_for(torch.zeros(0, 6, dtype=torch.int64)).shape == (0, 3, 64, 64)


def test_sample_factors_covers_every_value_uniformly(procedural):
    n = 20_000
    factors = procedural.sample_factors(n, generator=123)
    assert torch.equal(factors, procedural.sample_factors(n, generator=123))
    assert not torch.equal(factors, procedural.sample_factors(n, generator=124))
    for f, size in enumerate(procedural.factor_sizes):
        counts = torch.bincount(factors[:, f], minlength=size).double()
        assert counts.shape == (size,) and bool((counts > 0).all())
        expected = n / size
        # binomial count: 6 standard deviations around n / size
        assert float((counts - expected).abs().max()) < 6 * math.sqrt(expected)


def test_generators_of_every_kind_are_accepted(dsp):
    a = dsp.sample_factors(5, torch.Generator().manual_seed(7))
    b = dsp.sample_factors(5, 7)
    assert torch.equal(a, b)
    assert dsp.sample_factors(5, np.random.default_rng(0)).shape == (5, 5)
    with pytest.raises(TypeError, match="generator"):
        dsp.sample_factors(5, "seed")


# ------------------------------------------------------------------------------------------ rendering
def test_images_shapes_dtypes_and_range(procedural):
    images, factors = procedural.sample_batch(64, generator=0)
    assert images.shape == (64, *procedural.image_shape) and images.dtype == torch.float32
    assert factors.shape == (64, procedural.num_factors) and factors.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.amax(dim=(1, 2, 3)).min()) > 0.5  # every image shows something bright
    image, f = procedural[5]
    assert image.shape == procedural.image_shape and torch.equal(f, procedural.index_to_factors([5])[0])


def test_rendering_is_deterministic_per_index(procedural, monkeypatch):
    factors = procedural.sample_factors(48, generator=1)
    batch = procedural.images_for(factors)
    # the same tuples one at a time, and in another order inside a different batch
    singles = torch.cat([procedural.images_for(factors[i : i + 1]) for i in range(len(factors))])
    assert torch.equal(batch, singles)
    order = torch.randperm(len(factors), generator=torch.Generator().manual_seed(0))
    others = procedural.sample_factors(30, generator=2)
    mixed = procedural.images_for(torch.cat([others, factors[order]]))
    assert torch.equal(mixed[len(others) :], batch[order])
    # a fresh process-wide cache, filled in a different order, gives the same bits
    module = shapes3d if procedural.name == "shapes3d" else dsprites
    monkeypatch.setattr(module, "_CACHE", None)
    again = torch.cat([procedural.images_for(factors[i : i + 1]) for i in reversed(range(len(factors)))])
    assert torch.equal(again.flip(0), batch)
    index = procedural.factors_to_index(factors[:3])
    for k in range(3):
        assert torch.equal(procedural[int(index[k])][0], batch[k])


def _sweep(dataset, base, f):
    batch = base.repeat(dataset.factor_sizes[f], 1)
    batch[:, f] = torch.arange(dataset.factor_sizes[f])
    return dataset.images_for(batch)


def _max_pairwise_equal(images):
    flat = images.flatten(1)
    diff = (flat[:, None] - flat[None]).abs().amax(dim=-1)
    diff.fill_diagonal_(float("inf"))
    return diff


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_shapes3d_factor_changes_the_image_visibly(s3d, seed):
    base = s3d.sample_factors(1, generator=seed)[0]
    for f, name in enumerate(s3d.factor_names):
        images = _sweep(s3d, base, f)
        # every pair of values differs somewhere by a visible amount
        assert float(_max_pairwise_equal(images).min()) > 0.15, name


def test_shapes3d_factors_act_on_their_own_regions(s3d):
    base = torch.tensor([0, 3, 6, 4, 0, 7])
    changed = {}
    for f in (0, 1, 2):  # floor, wall, object hue
        images = _sweep(s3d, base, f)
        changed[f] = (images - images[:1]).abs().amax(dim=(0, 1)) > 1e-6
    # the hues recolour separate regions; only anti-aliased or shaded border pixels may be shared
    for a, b in ((0, 1), (0, 2), (1, 2)):
        overlap = (changed[a] & changed[b]).sum()
        assert int(overlap) < 0.1 * min(int(changed[a].sum()), int(changed[b].sum()))
    assert int(changed[0].sum()) > 1000 and int(changed[1].sum()) > 300 and int(changed[2].sum()) > 80


@pytest.mark.parametrize("seed", [0, 1])
def test_every_dsprites_factor_changes_the_image_visibly(dsp, seed):
    base = dsp.sample_factors(1, generator=seed)[0]
    for f, name in enumerate(dsp.factor_names):
        if name == "orientation":
            continue
        images = _sweep(dsp, base, f)
        assert float(_max_pairwise_equal(images).min()) > 0.2, name
        assert float(images.sum(dim=(1, 2, 3)).min()) > 10  # the sprite is in the picture
    # orientations: distinct turns, up to each shape's own symmetry (square 90, ellipse 180 degrees)
    for shape, period in ((0, 10), (1, 20), (2, 40)):
        for scale in (0, 5):
            b = base.clone()
            b[0], b[1] = shape, scale
            images = _sweep(dsp, b, 2)[:period]
            assert float(_max_pairwise_equal(images).min()) > 0.2, (shape, scale)
    square = _sweep(dsp, torch.tensor([0, 5, 0, 16, 16]), 2)
    assert float((square[0] - square[10]).abs().max()) < 0.1  # a quarter turn of a square is the square


def test_dataloader_with_two_workers(dsp):
    indices = [0, 17, 4096, 123_456, 737_279, 9, 8, 7]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dsp, indices), batch_size=4, num_workers=2)
    images, factors = zip(*loader)
    images, factors = torch.cat(images), torch.cat(factors)
    assert torch.equal(factors, dsp.index_to_factors(indices))
    assert torch.equal(images, dsp.images_for(factors))


def test_dataloader_shuffle_is_reproducible_with_a_seeded_generator(dsp):
    def first_batches():
        loader = torch.utils.data.DataLoader(
            dsp, batch_size=16, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(5)
        )
        batches = []
        for images, factors in loader:
            batches.append((images, factors))
            if len(batches) == 2:
                return batches
        raise AssertionError("the loader ended early")

    a, b = first_batches(), first_batches()
    for (ia, fa), (ib, fb) in zip(a, b):
        assert torch.equal(fa, fb) and torch.equal(ia, ib)
        assert torch.equal(ia, dsp.images_for(fa))


def test_factor_sweep_layout(dsp):
    images, columns = factor_sweep(dsp, torch.tensor([2, 3, 5, 10, 20]), max_columns=15)
    assert images.shape == (5, 15, 1, 64, 64)
    assert columns[0] == [0, 1, 2] and columns[2][0] == 0 and columns[2][-1] == 39 and len(columns[2]) == 15
    assert float(images[0, 3:].abs().max()) == 0.0  # padding after the 3 shapes
    assert torch.equal(images[3, 0], dsp.images_for([[2, 3, 5, 0, 20]])[0])


# ------------------------------------------------------------------------------------------ real files
SMALL_S3D = (2, 1, 2, 1, 2, 3)
SMALL_DSPRITES = (2, 1, 3, 2, 2)
SMALL_MPI3D = (2, 1, 1, 1, 1, 2, 3)


def _grid(sizes):
    n = math.prod(sizes)
    strides = np.array([math.prod(sizes[i + 1 :]) for i in range(len(sizes))])
    return (np.arange(n)[:, None] // strides) % np.array(sizes)


def _write_3dshapes(path, sizes=SMALL_S3D, shuffle=False, images_shape=None):
    classes = _grid(sizes)
    offsets = np.array([0.0, 0.0, 0.0, 0.75, 0.0, -30.0])
    steps = np.array([0.1, 0.1, 0.1, 0.5 / 7, 1.0, 60.0 / 14])
    labels = offsets + steps * classes
    if shuffle:
        labels = labels[::-1]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(labels), 64, 64, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images if images_shape is None else images.reshape(images_shape)
        f["labels"] = labels
    return images


def _write_dsprites(path, sizes=SMALL_DSPRITES, pixel_max=1):
    classes = np.concatenate([np.zeros((math.prod(sizes), 1), np.int64), _grid(sizes)], axis=1)
    values = classes.astype(np.float64) * 0.5
    rng = np.random.default_rng(1)
    imgs = (rng.random((len(classes), 64, 64)) < 0.3).astype(np.uint8) * pixel_max
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=values)
    return imgs


def _write_mpi3d(path, compressed=False):
    n = math.prod(SMALL_MPI3D)
    images = np.random.default_rng(2).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, images=images)
    return images


def test_shapes3d_file_loader(tmp_path):
    path = tmp_path / "3dshapes.h5"
    images = _write_3dshapes(path)
    ds = get_dataset("shapes3d", data_path=path)
    assert isinstance(ds, Shapes3DFile) and ds.factor_sizes == SMALL_S3D and len(ds) == len(images)
    np.testing.assert_allclose(ds.factor_values[5], [-30.0, -30.0 + 60 / 14, -30.0 + 120 / 14])
    factors = torch.tensor([[1, 0, 1, 0, 1, 2], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 2]])  # unsorted, repeated
    got = ds.images_for(factors)
    want = torch.from_numpy(images[ds.factors_to_index(factors).numpy()]).permute(0, 3, 1, 2) / 255.0
    assert got.shape == (3, 3, 64, 64) and torch.equal(got, want)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    assert torch.equal(
        torch.cat([x for x, _ in loader]), torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
    )


def test_dsprites_and_mpi3d_file_loaders(tmp_path):
    imgs = _write_dsprites(tmp_path / "dsprites.npz")
    ds = DSpritesFile(tmp_path / "dsprites.npz")
    assert ds.factor_sizes == SMALL_DSPRITES and ds.image_shape == (1, 64, 64)
    np.testing.assert_allclose(ds.factor_values[2], [0.0, 0.5, 1.0])
    assert torch.equal(ds[7][0], torch.from_numpy(imgs[7]).float()[None])

    for compressed in (False, True):
        path = tmp_path / f"mpi3d_{compressed}.npz"
        images = _write_mpi3d(path, compressed=compressed)
        mpi = MPI3DFile(path, factor_sizes=SMALL_MPI3D)
        assert isinstance(mpi._images(), np.memmap) != compressed  # stored members are memory-mapped
        image, factors = mpi[11]
        assert torch.equal(factors, torch.tensor([1, 0, 0, 0, 0, 1, 2]))
        assert torch.equal(image, torch.from_numpy(images[11]).permute(2, 0, 1).float() / 255)


def test_missing_files(tmp_path):
    for name in ("shapes3d", "dsprites", "mpi3d"):
        with pytest.raises(FileNotFoundError, match="nope.bin"):
            get_dataset(name, data_path=tmp_path / "nope.bin")


def test_bad_3dshapes_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.h5"
    _write_3dshapes(good)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.h5: not a readable HDF5 file"):
        Shapes3DFile(truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        Shapes3DFile(garbage)
    _write_dsprites(tmp_path / "dsprites.npz")
    with pytest.raises(ValueError, match="dsprites.npz: not a readable HDF5 file"):
        get_dataset("shapes3d", tmp_path / "dsprites.npz")

    no_labels = tmp_path / "no_labels.h5"
    with h5py.File(no_labels, "w") as f:
        f["images"] = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"found datasets \['images'\], expected 'images' and 'labels'"):
        Shapes3DFile(no_labels)
    _write_3dshapes(tmp_path / "flat.h5", images_shape=(24, 64, 192))
    with pytest.raises(ValueError, match=r"'images' has shape \(24, 64, 192\), expected \(N, N, N, 3\)"):
        Shapes3DFile(tmp_path / "flat.h5")
    _write_3dshapes(tmp_path / "shuffled.h5", shuffle=True)
    with pytest.raises(ValueError, match=r"not in mixed-radix order.*row 0 has factor indices \[1, 0, 1"):
        Shapes3DFile(tmp_path / "shuffled.h5")
    short = tmp_path / "short.h5"
    with h5py.File(good) as src, h5py.File(short, "w") as dst:
        dst["images"] = src["images"][:-1]
        dst["labels"] = src["labels"][:-1]
    with pytest.raises(ValueError, match="= 24 points but the file has 23 rows"):
        Shapes3DFile(short)
    wrong_dtype = tmp_path / "float_images.h5"
    with h5py.File(good) as src, h5py.File(wrong_dtype, "w") as dst:
        dst["images"] = src["images"][...].astype(np.float32)
        dst["labels"] = src["labels"][...]
    with pytest.raises(ValueError, match="'images' has dtype float32, expected uint8"):
        Shapes3DFile(wrong_dtype)


def test_bad_npz_files_give_clear_errors(tmp_path):
    good = tmp_path / "dsprites.npz"
    _write_dsprites(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"truncated.npz: not a readable .npz \(zip\) file"):
        DSpritesFile(truncated)
    corrupt = tmp_path / "corrupt.npz"
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt.npz"):
        DSpritesFile(corrupt)

    _write_mpi3d(tmp_path / "mpi3d.npz")
    with pytest.raises(ValueError, match=r"missing \['imgs', 'latents_classes'\].*looks like an MPI3D file"):
        get_dataset("dsprites", tmp_path / "mpi3d.npz")
    with pytest.raises(ValueError, match=r"missing \['images'\].*looks like a dSprites file"):
        get_dataset("mpi3d", good)
    with pytest.raises(ValueError, match=r"has 12 images, which fits no known MPI3D grid"):
        get_dataset("mpi3d", tmp_path / "mpi3d.npz")
    _write_dsprites(tmp_path / "scaled.npz", pixel_max=255)
    with pytest.raises(ValueError, match="0/1 pixels, found the value 255"):
        DSpritesFile(tmp_path / "scaled.npz")
    classes = np.concatenate([np.zeros((12, 1), np.int64), _grid((2, 1, 3, 2, 1))], axis=1)
    np.savez(tmp_path / "mismatch.npz", imgs=np.zeros((11, 64, 64), np.uint8), latents_classes=classes)
    with pytest.raises(ValueError, match=r"'imgs' has shape \(11, 64, 64\), expected \(12, N, N\)"):
        DSpritesFile(tmp_path / "mismatch.npz")


def test_get_dataset_names():
    assert isinstance(get_dataset("dsprites"), DSprites)
    with pytest.raises(
        ValueError, match="expected one of shapes3d, dsprites, mpi3d, falcor3d, isaac3d, got 'celeba'"
    ):
        get_dataset("celeba")
    with pytest.raises(ValueError, match="mpi3d has no procedural version"):
        get_dataset("mpi3d")


# ------------------------------------------------------------------------------------------ CLI
def test_data_show_writes_a_png(tmp_path, capsys):
    from latentquant.cli import main

    out = tmp_path / "grid.png"
    assert main(["data", "show", "dsprites", "--out", str(out), "--seed", "3"]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    assert "wrote" in capsys.readouterr().out

    h5 = tmp_path / "3dshapes.h5"
    _write_3dshapes(h5)
    out2 = tmp_path / "real.png"
    assert main(["data", "show", "shapes3d", "--data-path", str(h5), "--out", str(out2)]) == 0
    assert out2.read_bytes()[:8] == PNG_SIGNATURE


def test_data_show_user_errors_exit_2(tmp_path, capsys):
    from latentquant.cli import main

    assert main(["data", "show", "celeba", "--out", str(tmp_path / "x.png")]) == 2
    assert "expected one of shapes3d, dsprites, mpi3d" in capsys.readouterr().err
    missing = tmp_path / "missing.h5"
    assert (
        main(["data", "show", "shapes3d", "--data-path", str(missing), "--out", str(tmp_path / "x.png")]) == 2
    )
    assert "missing.h5" in capsys.readouterr().err
    assert main(["data", "show", "dsprites", "--out", str(tmp_path / "no_dir" / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()

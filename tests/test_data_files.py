"""Real-file loaders on generated fixtures: MPI3D grids, Falcor3D/Isaac3D PNG folders and their cache,
HDF5 and .npz safety, the evaluation set, and `latentquant train` on every real format."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile

import h5py
import numpy as np
import pytest
import torch
from fixtures.make_fixtures import (
    FALCOR3D_SIZES,
    ISAAC3D_SIZES,
    MPI3D_SIZES,
    grid,
    write_dsprites,
    write_falcor3d,
    write_isaac3d,
    write_mpi3d,
    write_shapes3d,
)
from PIL import Image

from latentquant.data import (
    FALCOR3D,
    ISAAC3D,
    MPI3D_GRIDS,
    DSpritesFile,
    ImageFolderDataset,
    MPI3DFile,
    Shapes3D,
    Shapes3DFile,
    folders,
    get_dataset,
)
from latentquant.data.npz import open_npz, read_member
from latentquant.train.evaluate import evaluation_factors


# ------------------------------------------------------------------------------------------ MPI3D grids
def test_mpi3d_grid_table_holds_both_official_grids():
    assert MPI3D_GRIDS[1_036_800] == ("toy/realistic/real", (6, 6, 2, 3, 3, 40, 40))
    assert MPI3D_GRIDS[460_800] == ("complex", (4, 4, 2, 3, 3, 40, 40))
    assert all(math.prod(sizes) == n for n, (_, sizes) in MPI3D_GRIDS.items())


def test_mpi3d_variant_is_told_by_image_count(tmp_path, monkeypatch):
    small_complex = (2, 1, 1, 1, 1, 2, 2)  # 8 images; the other fixture grid has 12
    monkeypatch.setitem(MPI3D_GRIDS, math.prod(MPI3D_SIZES), ("toy/realistic/real", MPI3D_SIZES))
    monkeypatch.setitem(MPI3D_GRIDS, math.prod(small_complex), ("complex", small_complex))
    toy_images = write_mpi3d(tmp_path / "toy.npz")
    complex_images = write_mpi3d(tmp_path / "complex.npz", sizes=small_complex)
    toy, cplx = get_dataset("mpi3d", tmp_path / "toy.npz"), get_dataset("mpi3d", tmp_path / "complex.npz")
    assert (toy.variant, toy.factor_sizes) == ("toy/realistic/real", MPI3D_SIZES)
    assert (cplx.variant, cplx.factor_sizes) == ("complex", small_complex)
    assert isinstance(cplx._images(), np.memmap)
    # images are stored in factor order: image 5 of the complex grid has factors 5 in mixed radix
    image, factors = cplx[5]
    assert factors.tolist() == [1, 0, 0, 0, 0, 0, 1]
    assert torch.equal(image, torch.from_numpy(complex_images[5]).permute(2, 0, 1).float() / 255)
    assert torch.equal(toy[11][0], torch.from_numpy(toy_images[11]).permute(2, 0, 1).float() / 255)


def test_mpi3d_unknown_image_count_names_the_known_grids(tmp_path):
    write_mpi3d(tmp_path / "odd.npz")
    with pytest.raises(ValueError, match=r"has 12 images, which fits no known MPI3D grid") as err:
        get_dataset("mpi3d", tmp_path / "odd.npz")
    assert "1,036,800" in str(err.value) and "460,800" in str(err.value) and "complex" in str(err.value)
    assert MPI3DFile(tmp_path / "odd.npz", factor_sizes=MPI3D_SIZES).variant == "custom"


def test_data_path_may_be_the_download_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(MPI3D_GRIDS, 12, ("complex", MPI3D_SIZES))
    write_mpi3d(tmp_path / "real3d_complicated_shapes_ordered.npz")
    write_shapes3d(tmp_path / "3dshapes.h5")
    assert get_dataset("mpi3d", tmp_path).path.name == "real3d_complicated_shapes_ordered.npz"
    assert get_dataset("shapes3d", tmp_path).path.name == "3dshapes.h5"
    with pytest.raises(FileNotFoundError, match=r"latentquant data download dsprites --dir"):
        get_dataset("dsprites", tmp_path)
    write_mpi3d(tmp_path / "mpi3d_toy.npz")
    with pytest.raises(ValueError, match="holds several files"):
        get_dataset("mpi3d", tmp_path)


def test_missing_real_datasets_name_the_download_command(tmp_path):
    for name in ("mpi3d", "falcor3d", "isaac3d"):
        with pytest.raises(ValueError, match=rf"latentquant data download {name} --dir DIR"):
            get_dataset(name)
        with pytest.raises(FileNotFoundError, match=rf"latentquant data download {name}"):
            get_dataset(name, tmp_path / "absent")


# ------------------------------------------------------------------------------------------ PNG folders
@pytest.mark.parametrize("spec", [FALCOR3D, ISAAC3D], ids=lambda s: s.name)
def test_png_folder_loader_grid_names_and_resize(tmp_path, spec):
    writer, sizes = (write_falcor3d, FALCOR3D_SIZES) if spec is FALCOR3D else (write_isaac3d, ISAAC3D_SIZES)
    folder, classes, pngs = writer(tmp_path)
    ds = get_dataset(spec.name, tmp_path)  # the parent folder works as well as the dataset folder
    assert isinstance(ds, ImageFolderDataset) and ds.folder == folder
    assert ds.factor_names == spec.factor_names and ds.factor_sizes == sizes
    assert ds.image_shape == (3, 64, 64) and len(ds) == len(pngs)
    np.testing.assert_allclose(ds.factor_values[0], np.arange(sizes[0]) * 0.25)
    images = ds.images_for(ds.index_to_factors(torch.arange(len(ds))))
    assert images.shape == (len(pngs), 3, 64, 64) and float(images.min()) >= 0 and float(images.max()) <= 1
    # antialiased bicubic: PIL's BICUBIC (Keys a = -0.5, support widened by the scale) to one grey level
    for k in (0, len(pngs) - 1):
        pil = np.asarray(Image.fromarray(pngs[k]).resize((64, 64), Image.BICUBIC), dtype=np.float32)
        ours = images[k].permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - pil).max() <= 1.0 + 1e-4
    # a resize without antialiasing is far from it on the same images
    plain = torch.nn.functional.interpolate(
        torch.from_numpy(pngs[:1]).permute(0, 3, 1, 2).float(), size=(64, 64), mode="bicubic"
    )
    assert float((plain.clamp(0, 255).round() - images[:1] * 255).abs().max()) > 3


def test_png_folder_labels_in_any_row_order(tmp_path):
    folder, classes, pngs = write_falcor3d(tmp_path, shuffle=True)
    ds = get_dataset("falcor3d", folder)
    assert ds._row_of is not None
    for row in (0, 5, len(pngs) - 1):
        got = ds.images_for(torch.from_numpy(classes[row : row + 1]))
        want = torch.from_numpy(folders.resize_images(pngs[row : row + 1])).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(got, want)


def test_png_cache_is_built_once_atomically_and_reused(tmp_path, monkeypatch, capsys):
    folder, _, pngs = write_falcor3d(tmp_path)
    ds = get_dataset("falcor3d", folder)
    assert ds.cache_path.parent == folder and not ds.cache_path.exists()
    first = ds.images_for(torch.zeros(1, 7, dtype=torch.int64))
    assert ds.cache_path.is_file() and "caching 12 falcor3d images" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary left
    cached = np.load(ds.cache_path, mmap_mode="r")
    assert cached.shape == (12, 64, 64, 3) and cached.dtype == np.uint8
    np.testing.assert_array_equal(cached, folders.resize_images(pngs))

    def no_decoding(self, rows):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(ImageFolderDataset, "_png_rows", no_decoding)
    again = get_dataset("falcor3d", folder)
    assert torch.equal(again.images_for(torch.zeros(1, 7, dtype=torch.int64)), first)
    monkeypatch.undo()
    # a damaged cache (cut short) is not used: it is rebuilt
    data = ds.cache_path.read_bytes()
    ds.cache_path.write_bytes(data[: len(data) // 2])
    rebuilt = get_dataset("falcor3d", folder)
    assert torch.equal(rebuilt.images_for(torch.zeros(1, 7, dtype=torch.int64)), first)
    assert ds.cache_path.stat().st_size == len(data)
    # uncached reads give the same images
    plain = ImageFolderDataset(folder, FALCOR3D, cache=False)
    factors = plain.sample_factors(20, generator=0)
    assert torch.equal(plain.images_for(factors), rebuilt.images_for(factors))


def test_png_cache_directory_from_env_and_argument(tmp_path, monkeypatch):
    folder, _, _ = write_falcor3d(tmp_path / "data")
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "env_cache"))
    ds = get_dataset("falcor3d", folder)
    assert ds.cache_path.parent == tmp_path / "env_cache"
    ds.build_cache()
    assert ds.cache_path.is_file() and not any(p.suffix == ".npy" for p in folder.iterdir())
    arg = ImageFolderDataset(folder, FALCOR3D, cache_dir=tmp_path / "arg_cache")
    assert arg.cache_path.parent == tmp_path / "arg_cache"
    assert arg.cache_path.name == ds.cache_path.name  # keyed by the data folder, not by the cache folder
    elsewhere, _, _ = write_falcor3d(tmp_path / "copy")
    assert get_dataset("falcor3d", elsewhere).cache_path.name != ds.cache_path.name


def test_png_folder_errors_name_the_file(tmp_path):
    folder, _, _ = write_falcor3d(tmp_path)
    (folder / "images" / "000011.png").unlink()
    with pytest.raises(ValueError, match=r"000011.png: image missing; the labels have 12 rows"):
        get_dataset("falcor3d", folder)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "images" / "000011.png")
    ds = get_dataset("falcor3d", folder)  # sizes are checked while decoding
    with pytest.raises(
        ValueError, match=r"000011.png: image has shape \(64, 64, 3\), expected \(128, 128, 3\)"
    ):
        ds.build_cache()
    assert not ds.cache_path.exists() and not list(folder.glob(".*tmp*"))
    (folder / "images" / "000011.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match=r"000011.png: not a readable PNG"):
        ImageFolderDataset(folder, FALCOR3D, cache=False).images_for(torch.tensor([[1, 0, 1, 0, 0, 0, 2]]))
    (folder / "images" / "000012.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds 13 PNG files, expected 12"):
        get_dataset("falcor3d", folder)
    (folder / "images" / "000012.png").unlink()
    with open(folder / "train-rec.labels", "wb") as handle:
        np.save(handle, np.zeros((12, 6)))
    with pytest.raises(
        ValueError, match=r"train-rec.labels: labels have shape \(12, 6\) float64, expected \(N, 7\)"
    ):
        get_dataset("falcor3d", folder)
    with open(folder / "train-rec.labels", "wb") as handle:
        np.save(handle, np.repeat(grid((2, 1, 2, 1, 1, 1, 3))[:6], 2, axis=0).astype(float))
    with pytest.raises(ValueError, match="train-rec.labels: the labels take"):
        get_dataset("falcor3d", folder)
    (folder / "train-rec.labels").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"train-rec.labels not found.*latentquant data download falcor3d"
    ):
        get_dataset("falcor3d", folder)


def test_png_dataset_in_dataloader_workers(tmp_path):
    folder, _, _ = write_isaac3d(tmp_path)
    ds = get_dataset("isaac3d", folder)
    ds.build_cache()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = torch.cat([x for x, _ in loader])
    assert torch.equal(batches, ds.images_for(ds.index_to_factors(torch.arange(len(ds)))))


# ------------------------------------------------------------------------------------------ HDF5 safety
def test_h5_external_storage_links_and_virtual_sources_are_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 192)  # 49,152 bytes = 4 images of 64x64x3
    labels = 0.1 * grid((2, 1, 2, 1, 1, 1)).astype(float)
    ext = tmp_path / "external.h5"
    with h5py.File(ext, "w") as f:
        f.create_dataset("images", shape=(4, 64, 64, 3), dtype=np.uint8, external=[(str(secret), 0, 49_152)])
        f["labels"] = labels
    with pytest.raises(ValueError, match=r"external.h5: dataset 'images' stores its data in external files"):
        get_dataset("shapes3d", ext)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["pixels"] = np.zeros((4, 64, 64, 3), np.uint8)
    link = tmp_path / "link.h5"
    with h5py.File(link, "w") as f:
        f["images"] = h5py.ExternalLink(str(other), "pixels")
        f["labels"] = labels
    with pytest.raises(ValueError, match=r"link.h5: 'images' is an external link to .*other.h5"):
        get_dataset("shapes3d", link)

    virtual = tmp_path / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(4, 64, 64, 3), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(other), "pixels", shape=(4, 64, 64, 3))
    with h5py.File(virtual, "w") as f:
        f.create_virtual_dataset("images", layout)
        f["labels"] = labels
    with pytest.raises(ValueError, match=r"virtual.h5: virtual dataset 'images' maps data from"):
        get_dataset("shapes3d", virtual)


def test_h5_images_group_is_a_clear_error(tmp_path):
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as f:
        f.create_group("images")
        f["labels"] = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"group.h5: 'images' is an HDF5 group, expected a dataset"):
        get_dataset("shapes3d", path)


def _corrupt_chunk(path, index):
    with h5py.File(path, "r") as f:
        info = f["images"].id.get_chunk_info(index)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 8 : info.byte_offset + info.size - 4] = bytes(info.size - 12)
    path.write_bytes(bytes(data))


def test_corrupt_gzip_chunk_is_a_value_error_naming_file_and_index(tmp_path):
    path = tmp_path / "gzip.h5"
    write_shapes3d(path, gzip=True)
    _corrupt_chunk(path, 5)
    ds = Shapes3DFile(path, cache=False)  # first and last chunks are fine: found when read
    assert ds.storage == "hdf5"
    good = ds.index_to_factors([4, 6])
    assert ds.images_for(good).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"gzip.h5: cannot read the images at indices \[5\]"):
        ds.images_for(ds.index_to_factors([5]))
    cached = get_dataset("shapes3d", path)  # the cache build meets it and names the index
    assert cached.storage == "cache"
    with pytest.raises(ValueError, match=r"gzip.h5: cannot read 'images'\[5\]"):
        cached.images_for(good)
    assert not cached.cache_path.exists() and not list(tmp_path.glob(".*tmp*"))
    first = tmp_path / "first.h5"
    write_shapes3d(first, gzip=True)
    _corrupt_chunk(first, 0)
    with pytest.raises(ValueError, match=r"first.h5: cannot read 'images'\[0\]"):
        get_dataset("shapes3d", first)


def test_h5_storage_contiguous_is_memory_mapped_chunked_is_cached(tmp_path, monkeypatch):
    images = write_shapes3d(tmp_path / "plain.h5")
    plain = get_dataset("shapes3d", tmp_path / "plain.h5")
    assert plain.storage == "memmap" and isinstance(plain._images(), np.memmap)
    assert not plain.cache_path.exists()
    everything = plain.index_to_factors(torch.arange(len(plain)))
    want = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(plain.images_for(everything), want)

    write_shapes3d(tmp_path / "gzip.h5", gzip=True)
    monkeypatch.setattr(Shapes3DFile, "_CHUNK", 5)  # several blocks
    chunked = get_dataset("shapes3d", tmp_path / "gzip.h5", cache_dir=tmp_path / "cache")
    assert chunked.storage == "cache" and chunked.cache_path.parent == tmp_path / "cache"
    assert torch.equal(chunked.images_for(everything), want) and chunked.cache_path.is_file()
    assert torch.equal(Shapes3DFile(tmp_path / "gzip.h5", cache=False).images_for(everything), want)
    # the cache is stale once the file changes
    cache_mtime = chunked.cache_path.stat().st_mtime
    os.utime(tmp_path / "gzip.h5", (cache_mtime + 10, cache_mtime + 10))
    again = get_dataset("shapes3d", tmp_path / "gzip.h5", cache_dir=tmp_path / "cache")
    assert torch.equal(again.images_for(everything[:3]), want[:3])
    assert chunked.cache_path.stat().st_mtime > cache_mtime


# ------------------------------------------------------------------------------------------ npz safety
def _npy_header(shape, dtype="<u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _write_npz(path, members: dict[str, bytes], compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for key, data in members.items():
            archive.writestr(f"{key}.npy", data)


def test_npz_member_claiming_a_tebibyte_is_refused_before_allocating(tmp_path):
    huge = _npy_header((2**40,)) + b"\0" * 64
    for compress in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / f"huge_{compress}.npz"
        _write_npz(path, {"images": huge}, compress)
        with pytest.raises(
            ValueError, match=r"huge_\d.npz: member 'images' declares shape \(1099511627776,\)"
        ):
            get_dataset("mpi3d", path)
    classes = np.concatenate([np.zeros((12, 1), np.int64), grid((2, 1, 3, 2, 1))], axis=1)
    buffer = io.BytesIO()
    np.save(buffer, classes)
    _write_npz(
        tmp_path / "dsprites.npz", {"latents_classes": buffer.getvalue(), "imgs": huge}, zipfile.ZIP_DEFLATED
    )
    with pytest.raises(ValueError, match=r"dsprites.npz: member 'imgs' declares shape"):
        DSpritesFile(tmp_path / "dsprites.npz")


def test_npz_read_into_memory_is_checked_against_available_memory(tmp_path, monkeypatch):
    write_dsprites(tmp_path / "dsprites.npz")
    monkeypatch.setattr("latentquant.data.npz.available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"dsprites.npz: member '\w+' .* needs .* GiB in memory, only"):
        DSpritesFile(tmp_path / "dsprites.npz")


def test_npz_reads_only_the_members_asked_for(tmp_path):
    path = tmp_path / "extra.npz"
    images = np.zeros((3, 64, 64, 3), np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, images)
    _write_npz(path, {"images": buffer.getvalue(), "junk": _npy_header((2**40,)) + b"\0" * 16})
    with open_npz(path) as archive:
        got = read_member(path, archive, "images")
    assert isinstance(got, np.memmap) and got.shape == (3, 64, 64, 3)


def test_npz_truncated_and_crc_errors_name_the_file(tmp_path):
    path = tmp_path / "mpi3d.npz"
    write_mpi3d(path)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ValueError, match=r"cut.npz: not a readable .npz \(zip\) file"):
        MPI3DFile(cut, factor_sizes=MPI3D_SIZES)
    flipped = tmp_path / "flipped.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped.npz: corrupt .npz: member 'images.npy' fails its CRC"):
        MPI3DFile(flipped, factor_sizes=MPI3D_SIZES)


def test_metrics_cli_reads_only_sources_and_latents(tmp_path, capsys):
    from latentquant.cli import main

    rng = np.random.default_rng(0)
    sources = rng.integers(0, 3, (200, 2))
    members = {}
    for key, array in (("sources", sources), ("latents", sources + 0.01 * rng.normal(size=(200, 2)))):
        buffer = io.BytesIO()
        np.save(buffer, array)
        members[key] = buffer.getvalue()
    members["junk"] = _npy_header((2**40,)) + b"\0" * 16  # a member the command does not need
    good = tmp_path / "rep.npz"
    _write_npz(good, members, zipfile.ZIP_DEFLATED)
    assert main(["metrics", str(good), "--metrics", "infomec", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_samples"] == 200
    bad = tmp_path / "bad.npz"
    _write_npz(bad, {**members, "latents": _npy_header((2**38, 4), "<f8") + b"\0" * 16}, zipfile.ZIP_DEFLATED)
    capsys.readouterr()
    assert main(["metrics", str(bad), "--metrics", "infomec"]) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "member 'latents' declares shape (274877906944, 4)" in err


# ------------------------------------------------------------------------------------------ evaluation set
def test_evaluation_set_is_a_seeded_subset_without_replacement(tmp_path, monkeypatch):
    ds = Shapes3D()  # only indices are drawn: no image is rendered
    factors = evaluation_factors(ds, 10_000, seed=20230228)
    index = ds.factors_to_index(factors)
    # i.i.d. draws (the old protocol) repeat ~100 of 480,000 images in 10,000; the authors' set never does
    assert factors.shape == (10_000, 6) and len(torch.unique(index)) == 10_000
    want = torch.randperm(len(ds), generator=torch.Generator().manual_seed(20230228))[:10_000]
    assert torch.equal(index, want)
    assert torch.equal(evaluation_factors(ds, 10_000, seed=20230228), factors)
    assert not torch.equal(evaluation_factors(ds, 10_000, seed=1), factors)
    # a real file smaller than the request: every image once
    monkeypatch.setitem(MPI3D_GRIDS, 12, ("toy/realistic/real", MPI3D_SIZES))
    write_mpi3d(tmp_path / "small_mpi3d.npz")
    small = get_dataset("mpi3d", tmp_path / "small_mpi3d.npz")
    everything = small.factors_to_index(evaluation_factors(small, 10_000, seed=0))
    assert sorted(everything.tolist()) == list(range(len(small)))


# ------------------------------------------------------------------------------------------ training
TRAIN_GRIDS = {  # >= 100 images (training requires eval_samples >= 100), every factor varying
    "shapes3d": (2, 2, 2, 2, 2, 4),
    "dsprites": (2, 2, 2, 4, 4),
    "mpi3d": (2, 2, 2, 2, 2, 2, 2),
    "falcor3d": (2, 2, 2, 2, 2, 2, 2),
    "isaac3d": (2, 2, 2, 2, 2, 2, 2, 2, 2),
}


def _fixture(name, tmp_path, monkeypatch):
    sizes = TRAIN_GRIDS[name]
    if name == "shapes3d":
        write_shapes3d(tmp_path / "3dshapes.h5", sizes=sizes)
        return tmp_path / "3dshapes.h5"
    if name == "dsprites":
        write_dsprites(tmp_path / "d.npz", sizes=sizes)
        return tmp_path / "d.npz"
    if name == "mpi3d":
        monkeypatch.setitem(MPI3D_GRIDS, math.prod(sizes), ("complex", sizes))
        write_mpi3d(tmp_path / "real3d_complicated_shapes_ordered.npz", sizes=sizes)
        return tmp_path
    writer = write_falcor3d if name == "falcor3d" else write_isaac3d
    return writer(tmp_path, sizes=sizes)[0]


@pytest.mark.parametrize(
    "name",
    ["falcor3d"]
    + [pytest.param(n, marks=pytest.mark.heavy) for n in ("shapes3d", "dsprites", "mpi3d", "isaac3d")],
)
def test_train_cli_on_every_real_format(tmp_path, monkeypatch, capsys, name):
    from latentquant.cli import main

    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    data_path = _fixture(name, tmp_path, monkeypatch)
    out = tmp_path / "run"
    argv = ["train", "--model", "qlae", "--dataset", name, "--data-path", str(data_path), "--steps", "2"]
    argv += ["--out", str(out), "--no-progress", "batch_size=4", "encoder=tiny", "decoder=tiny"]
    argv += ["eval_samples=100", "eval_every=0", "log_every=1", "checkpoint_every=2", "device=cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    ds = get_dataset(name, data_path)
    assert metrics["dataset"] == name and metrics["factor_names"] == list(ds.factor_names)
    assert metrics["eval_samples"] == min(100, len(ds))  # without replacement: at most every image once
    assert os.path.exists(out / "report.html")


def test_pickled_datasets_carry_no_pixels_and_reopen_their_files(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setitem(MPI3D_GRIDS, 12, ("complex", MPI3D_SIZES))
    write_mpi3d(tmp_path / "mpi3d.npz")
    write_shapes3d(tmp_path / "3dshapes.h5")
    folder, _, _ = write_falcor3d(tmp_path)
    for ds in (
        get_dataset("mpi3d", tmp_path / "mpi3d.npz"),
        get_dataset("shapes3d", tmp_path / "3dshapes.h5"),
        get_dataset("falcor3d", folder),
    ):
        factors = ds.index_to_factors(torch.arange(len(ds)))
        want = ds.images_for(factors)  # maps the pixels in this process
        blob = pickle.dumps(ds)
        assert len(blob) < 20_000, (ds.name, len(blob))  # 12-24 images of 12 KiB would not fit
        assert torch.equal(pickle.loads(blob).images_for(factors), want)


def test_cache_refuses_to_start_without_disk_space(tmp_path, monkeypatch):
    import collections

    folder, _, _ = write_falcor3d(tmp_path)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("latentquant.data.cache.shutil.disk_usage", lambda path: usage(10**9, 10**9, 1000))
    ds = get_dataset("falcor3d", folder, cache_dir=tmp_path / "cache")
    with pytest.raises(
        ValueError, match=r"cache: the falcor3d cache needs 0.00 GiB of disk, only 0.00 GiB are free"
    ):
        ds.images_for(torch.zeros(1, 7, dtype=torch.int64))
    assert _names(tmp_path / "cache") == []


def _names(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_prepare_builds_caches_up_front_and_data_show_builds_none(tmp_path, capsys):
    from latentquant.cli import main

    folder, _, _ = write_falcor3d(tmp_path)
    out = tmp_path / "grid.png"
    assert main(["data", "show", "falcor3d", "--data-path", str(folder), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(folder.glob("*.npy"))
    ds = get_dataset("falcor3d", folder)
    ds.prepare()
    assert ds.cache_path.is_file()
    write_shapes3d(tmp_path / "gzip.h5", gzip=True)
    h5 = get_dataset("shapes3d", tmp_path / "gzip.h5")
    h5.prepare()
    assert h5.cache_path.is_file()
    write_shapes3d(tmp_path / "plain.h5")
    plain = get_dataset("shapes3d", tmp_path / "plain.h5")
    plain.prepare()  # memory-mapped: nothing to build
    assert not plain.cache_path.exists()
    Shapes3D().prepare()


def test_data_prepare_command_and_npz_labels(tmp_path, capsys):
    from latentquant.cli import main

    folder, _, _ = write_isaac3d(tmp_path)
    argv = ["data", "prepare", "isaac3d", "--data-path", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    assert "ready (cache" in capsys.readouterr().out and len(list((tmp_path / "c").glob("*.npy"))) == 1
    write_shapes3d(tmp_path / "3dshapes.h5")
    assert main(["data", "prepare", "shapes3d", "--data-path", str(tmp_path)]) == 0
    assert "no cache needed" in capsys.readouterr().out
    np.savez(folder / "labels.npy", labels=np.zeros((4, 9)))  # np.savez appends .npz: rename over
    os.replace(folder / "labels.npy.npz", folder / "labels.npy")
    assert main(["data", "prepare", "isaac3d", "--data-path", str(folder)]) == 2
    assert "labels.npy: an .npz archive, expected one .npy array" in capsys.readouterr().err


@pytest.mark.heavy
@pytest.mark.parametrize("count", [460_800, 1_036_800])
def test_mpi3d_files_of_the_official_sizes_are_told_apart(tmp_path, count):
    from fixtures.make_fixtures import write_real_size_mpi3d

    path = tmp_path / "mpi3d.npz"
    write_real_size_mpi3d(path, count)  # 5.7 / 12.7 GB apparent size, a few KiB on disk
    ds = get_dataset("mpi3d", path)
    assert ds.variant == MPI3D_GRIDS[count][0] and ds.factor_sizes == MPI3D_GRIDS[count][1]
    assert isinstance(ds._images(), np.memmap) and ds._images().shape == (count, 64, 64, 3)
    images = ds.images_for(ds.index_to_factors([0, count - 1]))
    assert images.shape == (2, 3, 64, 64) and float(images.abs().sum()) == 0.0


def test_3dshapes_of_the_official_size_gives_the_official_grid(tmp_path):
    sizes = (10, 10, 10, 8, 4, 15)
    values = [np.arange(10) / 10, np.arange(10) / 10, np.arange(10) / 10]
    values += [np.linspace(0.75, 1.25, 8), np.arange(4.0), np.linspace(-30.0, 30.0, 15)]
    classes = grid(sizes)
    labels = np.stack([v[classes[:, f]] for f, v in enumerate(values)], axis=1)
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as f:  # chunks never written take no space: 5.9 GB of pixels, a few MB of file
        f.create_dataset("images", shape=(480_000, 64, 64, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
        f["labels"] = labels
    ds = get_dataset("shapes3d", path)
    assert ds.factor_sizes == sizes and len(ds) == 480_000 and ds.storage == "cache"
    for f, v in enumerate(values):
        np.testing.assert_allclose(ds.factor_values[f], v)
    assert ds.factor_names == ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")

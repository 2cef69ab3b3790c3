"""The common interface of every ground-truth dataset: factor grid, mixed-radix indexing, sampling.

A ground-truth dataset holds one image per point of a grid of discrete generative factors. Image ``i``
has the factor tuple given by writing ``i`` in mixed radix over ``factor_sizes``, the first factor the
slowest (the order the real 3dshapes, dSprites and MPI3D files use). Subclasses implement ``_render``
(a batch of validated factor tuples to images); everything else lives here.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np
import torch

GeneratorLike = torch.Generator | np.random.Generator | int | None


def as_torch_generator(generator: GeneratorLike) -> torch.Generator:
    """A CPU ``torch.Generator`` from a torch generator, a NumPy generator, an int seed or ``None``.

    ``None`` gives a generator seeded from the operating system; a NumPy generator is advanced by one draw.
    """
    if isinstance(generator, torch.Generator):
        return generator
    out = torch.Generator()
    if generator is None:
        out.seed()
    elif isinstance(generator, np.random.Generator):
        out.manual_seed(int(generator.integers(0, 2**63 - 1)))
    elif isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        out.manual_seed(int(generator))
    else:
        raise TypeError(
            "generator: expected a torch.Generator, numpy.random.Generator, int seed or None, "
            f"got {type(generator).__name__}"
        )
    return out


class GroundTruthDataset(torch.utils.data.Dataset, abc.ABC):
    """A dataset with one image per point of a discrete factor grid, indexed in mixed radix.

    Attributes:
        name: the dataset's name (``"shapes3d"``, ``"dsprites"``, ``"mpi3d"``).
        factor_names: one name per factor, slowest-varying first.
        factor_sizes: number of values of each factor.
        factor_values: per factor, a float64 array of the physical value of each index (hue, scale, ...).
        image_shape: ``(C, H, W)`` of every image.

    ``dataset[i]`` is ``(image, factors)``: a float32 ``(C, H, W)`` tensor in [0, 1] and an int64 ``(F,)``
    tensor. It works with ``torch.utils.data.DataLoader`` (any number of workers); for training,
    ``sample_batch`` renders a whole batch in one vectorized call, which is much faster.
    """

    def __init__(
        self,
        name: str,
        factor_names: Sequence[str],
        factor_sizes: Sequence[int],
        factor_values: Sequence[np.ndarray],
        image_shape: tuple[int, int, int],
    ) -> None:
        if len(factor_names) != len(factor_sizes) or len(factor_values) != len(factor_sizes):
            raise ValueError(
                f"factor_names, factor_sizes and factor_values must have one entry per factor, got "
                f"{len(factor_names)}, {len(factor_sizes)} and {len(factor_values)}"
            )
        sizes = tuple(int(s) for s in factor_sizes)
        if any(s < 1 for s in sizes):
            raise ValueError(f"factor_sizes: every size must be >= 1, got {sizes}")
        for fname, size, values in zip(factor_names, sizes, factor_values):
            if len(values) != size:
                raise ValueError(f"factor_values[{fname!r}]: expected {size} values, got {len(values)}")
        self.name = name
        self.factor_names = tuple(factor_names)
        self.factor_sizes = sizes
        self.factor_values = tuple(np.asarray(v, dtype=np.float64) for v in factor_values)
        self.image_shape = tuple(int(s) for s in image_shape)
        strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
        self._strides = torch.tensor(strides, dtype=torch.int64)
        self._sizes = torch.tensor(sizes, dtype=torch.int64)

    # ----------------------------------------------------------------------------------- indexing
    @property
    def num_factors(self) -> int:
        """Number of factors F."""
        return len(self.factor_sizes)

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def __repr__(self) -> str:
        grid = ", ".join(f"{n}={s}" for n, s in zip(self.factor_names, self.factor_sizes))
        return f"{type(self).__name__}({grid}; {len(self)} images of {self.image_shape})"

    def index_to_factors(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Factor tuples of image indices.

        Args:
            indices: ``(N,)`` integers in ``[0, len(self))``.
        Returns:
            ``(N, F)`` int64 tensor of factor indices.
        """
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
        if idx.ndim != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(
                f"indices: expected a 1-D integer array, got shape {tuple(idx.shape)} {idx.dtype}"
            )
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ValueError(
                f"indices: expected values in [0, {len(self)}), got min {int(idx.min())} max {int(idx.max())}"
            )
        return torch.div(idx[:, None], self._strides, rounding_mode="floor") % self._sizes

    def factors_to_index(self, factors: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> torch.Tensor:
        """Image indices of factor tuples (the inverse of ``index_to_factors``).

        Args:
            factors: ``(N, F)`` integer factor indices, factor ``f`` in ``[0, factor_sizes[f])``.
        Returns:
            ``(N,)`` int64 tensor.
        """
        return (self.check_factors(factors) * self._strides).sum(dim=1)

    def check_factors(self, factors: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> torch.Tensor:
        """Validate a batch of factor tuples and return it as a CPU int64 ``(N, F)`` tensor.

        Raises:
            ValueError: wrong shape, a non-integer dtype, or a factor index out of its range (the message
                names the factor and the offending value).
        """
        f = torch.as_tensor(np.asarray(factors) if not torch.is_tensor(factors) else factors)
        if f.ndim != 2 or f.shape[1] != self.num_factors:
            raise ValueError(
                f"factors: expected shape (N, {self.num_factors}) for factors {self.factor_names}, "
                f"got {tuple(f.shape)}"
            )
        if f.dtype.is_floating_point or f.dtype.is_complex or f.dtype == torch.bool:
            raise ValueError(f"factors: expected an integer dtype, got {f.dtype}")
        f = f.to(device="cpu", dtype=torch.int64)
        if f.numel():
            bad = (f < 0) | (f >= self._sizes)
            if bool(bad.any()):
                row, col = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"factors: {self.factor_names[col]} must be in [0, {self.factor_sizes[col]}), "
                    f"got {int(f[row, col])} (row {row})"
                )
        return f.contiguous()

    # ----------------------------------------------------------------------------------- sampling
    def sample_factors(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """``n`` factor tuples drawn uniformly over the grid (each factor independently uniform).

        Args:
            n: number of samples.
            generator: a ``torch.Generator``, ``numpy.random.Generator``, int seed, or ``None``.
        Returns:
            ``(n, F)`` int64 tensor.
        """
        if n < 0:
            raise ValueError(f"n: expected a count >= 0, got {n}")
        gen = as_torch_generator(generator)
        u = torch.rand((n, self.num_factors), generator=gen, dtype=torch.float64)
        return torch.minimum((u * self._sizes).to(torch.int64), self._sizes - 1)

    def images_for(self, factors: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> torch.Tensor:
        """Render (or read) the images of a batch of factor tuples.

        Args:
            factors: ``(B, F)`` integer factor indices.
        Returns:
            ``(B, C, H, W)`` float32 tensor in [0, 1]. Image ``b`` depends on ``factors[b]`` only, never on
            the rest of the batch.
        """
        f = self.check_factors(factors)
        if f.shape[0] == 0:
            return torch.zeros((0, *self.image_shape), dtype=torch.float32)
        return self._render(f)

    def sample_batch(
        self, batch_size: int, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch in one vectorized call: ``(images (B, C, H, W) float32, factors (B, F) int64)``."""
        factors = self.sample_factors(batch_size, generator)
        return self.images_for(factors), factors

    def prepare(self) -> None:
        """Do the one-off work before the first read (build a decoded-image cache); a no-op by default.

        Training calls it before its first step so that a long cache build, or a corrupt file found while
        building it, happens before the run starts; without the call the work happens on the first read.
        """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {self.name} with {len(self)} images")
        factors = self.index_to_factors([i % len(self)])
        return self._render(factors)[0], factors[0]

    @abc.abstractmethod
    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        """Images of validated factors ``(B, F)`` int64, B >= 1 → ``(B, C, H, W)`` float32 in [0, 1]."""

"""The Triton launchers under test, decorated under TRITON_INTERPRET=1 (set by tests/triton/conftest.py).

The variable only takes effect if it is set before triton is first imported (triton's own library functions
are decorated then), so if something imported triton earlier in the session these tests skip and say so.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install '.[triton]')")

from latentquant.triton_kernels import _common, latent_quantize, scalar_quantize, vector_quantize  # noqa: E402

if type(_common.nearest_scalar).__name__ != "InterpretedFunction":
    pytest.skip(
        "triton was imported before tests/triton/conftest.py set TRITON_INTERPRET=1; "
        "run `TRITON_INTERPRET=1 pytest tests/triton`",
        allow_module_level=True,
    )

OPS = {**scalar_quantize.KERNELS, **latent_quantize.KERNELS, **vector_quantize.KERNELS}

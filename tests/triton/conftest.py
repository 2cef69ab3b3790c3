"""Run the Triton kernels on CPU tensors with Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton.jit`` decorates the kernels (at import of
``latentquant.triton_kernels.*``), so it is set here, when pytest first enters this directory.
Without triton installed these tests skip with the reason.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

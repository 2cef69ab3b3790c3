"""Plain PyTorch / NumPy oracles, one module per op (``<op>_ref``): the truth every kernel is tested against.

They are also what runs when the compiled extension is missing.
"""

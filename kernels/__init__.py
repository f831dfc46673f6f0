"""Triton kernels, one op per file; installed as actstore.kernels."""

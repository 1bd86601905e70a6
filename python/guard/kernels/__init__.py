"""guard.kernels: the Triton kernels behind guard.ops, one concern per file.

Each kernel file holds, in this order, its `@triton.jit` forward and backward kernels, their launchers
and the `torch.autograd.Function` that ties them together; module wrappers live elsewhere (guard.ops).
The repository's top-level `kernels/` holds a symlink to each file here (and no `__init__.py`, so it never
shadows another distribution's `kernels` package); the sources ship in the wheel as `guard.kernels`.
"""

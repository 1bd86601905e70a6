"""guard.kernels: the Triton kernels behind guard.ops, one concern per file.

Each kernel file holds, in this order, its `@triton.jit` forward and backward kernels, their launchers
and the `torch.autograd.Function` that ties them together; module wrappers live elsewhere (guard.ops).
The repository's top-level `kernels/` is a symlink to this folder, so the sources ship in the wheel as
`guard.kernels`. The fused kernels themselves arrive with issue 3; until then guard.ops is not built.
"""

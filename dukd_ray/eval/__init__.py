"""Evaluation with the SR literature's conventions.

`resize` (MATLAB bicubic), `metrics` (PSNR/SSIM on Y), `inference` (x8 self-ensemble, tiles),
`benchmark` (EDSR benchmark layout on any fsspec URL, set scores) and the CLI in `__main__`.
"""

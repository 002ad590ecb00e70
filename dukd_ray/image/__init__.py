"""The image layer under every other package: files, conversions, MATLAB resize, geometry, LR/HR pairs.

`io` (decode/encode RGB uint8 HWC, errors naming the file), `convert` (uint8 HWC <-> float
tensors in [0, 1]), `resize` (MATLAB bicubic `imresize`), `geometry` (the flip/transpose ops and
their inverses) and `pairs` (reading an LR/HR pair under the HR = scale x LR rule). It imports
nothing of dukd_ray but `storage`, so models, eval, data and distill can all stand on it.
"""

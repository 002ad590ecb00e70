"""Distil the RCAN x4 student with DUKD (paper config) on Ray Train: python jobs/rcan_x4.py --help"""

from dukd_ray.train.cli import main

if __name__ == "__main__":
    main("rcan_x4")

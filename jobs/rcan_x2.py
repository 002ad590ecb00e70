"""Distil the RCAN x2 student with DUKD (paper config) on Ray Train: python jobs/rcan_x2.py --help"""

from dukd_ray.train.cli import main

if __name__ == "__main__":
    main("rcan_x2")

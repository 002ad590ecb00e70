"""Distil the SwinIR x2 student with DUKD (paper config) on Ray Train: python jobs/swinir_x2.py --help"""

from dukd_ray.train.cli import main

if __name__ == "__main__":
    main("swinir_x2")

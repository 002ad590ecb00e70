"""Distil the EDSR x3 student with DUKD (paper config) on Ray Train: python jobs/edsr_x3.py --help"""

from dukd_ray.train.cli import main

if __name__ == "__main__":
    main("edsr_x3")

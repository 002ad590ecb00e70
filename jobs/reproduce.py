"""Reproduce a row of the paper, every run it needs in order: python jobs/reproduce.py --help

python jobs/reproduce.py --arch edsr --scale 4 --tiny --name edsr-x4-tiny   # the whole chain on a CPU
"""

from dukd_ray.train.pipeline import main

if __name__ == "__main__":
    main()

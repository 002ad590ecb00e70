"""Train what a config file says: python jobs/train.py --config FILE (ours, or a BasicSR/DUKD option file)."""

from dukd_ray.train.cli import main_config

if __name__ == "__main__":
    main_config()

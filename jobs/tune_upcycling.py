"""Ray Tune sweep over DUKD's upcycling weights and augmentation sets (docs/tune.md).

    python jobs/tune_upcycling.py --preset edsr_x4 --space default --num-samples 16 --max-steps 20000 \
        --teacher URL --data URL --val-data URL --set data.val_sets=[Set5] --storage s3://bucket/sweeps
"""

from dukd_ray.tune.cli import main

if __name__ == "__main__":
    main()

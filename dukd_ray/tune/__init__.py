"""Ray Tune sweeps over DUKD's upcycling weights and augmentation sets (docs/tune.md).

`space` reads and checks search-space YAML files, `sweep` runs a sweep (one Ray Train run per trial)
and resumes it, `results` writes the ranked table, the PSNR plot and the best config, `cli` is
`jobs/tune_upcycling.py`. Nothing is imported here, so `import dukd_ray.tune.space` stays light.
"""

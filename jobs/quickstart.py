"""The README's first command: teacher, then scratch / kd / fakd / dukd students, then a report (CPU).

python jobs/quickstart.py [--out quickstart_out] [--fresh] [--help]
"""

from dukd_ray.quickstart import main

if __name__ == "__main__":
    main()

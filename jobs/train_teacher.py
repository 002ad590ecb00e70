"""Train a teacher from scratch on Ray Train: python jobs/train_teacher.py --arch edsr --scale 4 --help"""

from dukd_ray.train.cli import main_teacher

if __name__ == "__main__":
    main_teacher()

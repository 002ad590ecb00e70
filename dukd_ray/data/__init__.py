"""Training and evaluation data: image I/O, sample data, DIV2K sources, shard packer, training stream."""

from dukd_ray.data.stream import TrainStream, build_train_stream

__all__ = ["TrainStream", "build_train_stream"]

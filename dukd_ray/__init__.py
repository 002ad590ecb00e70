"""dukd-ray: Data Upcycling Knowledge Distillation for image super-resolution on Ray."""

__version__ = "0.1.0"

from .sdmad import SDMADInferTask

__all__ = ["SDMADInferTask"]

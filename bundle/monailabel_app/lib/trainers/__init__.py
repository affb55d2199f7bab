from .sdmad import SDMADTrainTask

__all__ = ["SDMADTrainTask"]

"""The scaffolding shared by the package's dictionary transforms that apply one array transform to each key."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["ArrayTransformd"]


class ArrayTransformd(MapTransform):
    """Dictionary version of an array transform: ``self.transform`` applied to the value of each key.

    A subclass either names the array transform class in ``array_transform`` (built with no argument, e.g.
    :class:`~sdmad_monai.transforms.LoadVolume`) or sets ``self.transform`` in its ``__init__`` after calling this
    one (e.g. :class:`~sdmad_monai.transforms.ResizeToSquared`).

    Args:
        keys: keys to transform.
        allow_missing_keys: don't raise for missing keys.
    """

    array_transform: ClassVar[type[Transform] | None] = None
    transform: Callable[[Any], Any]

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if self.array_transform is not None:
            self.transform = self.array_transform()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d

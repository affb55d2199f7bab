"""``python -m sdmad_monai``: the ``sdmad`` command line (:mod:`sdmad_monai.cli`)."""

from .cli import main

main()

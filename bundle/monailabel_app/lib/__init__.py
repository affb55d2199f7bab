"""MONAI Label task classes of the SD-MAD sample app (thin: the logic is in ``sdmad_monai.label``)."""

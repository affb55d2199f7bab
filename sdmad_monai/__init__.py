"""sdmad_monai: SD-MAD (Sign-Driven few-shot Multi-Anomaly Detection) as a MONAI extension.

The paper's math lives in :mod:`sdmad_monai.functional`; the CLIP backbone, shift adapters and the detector in
:mod:`sdmad_monai.networks`; prompt banks in :mod:`sdmad_monai.prompts`; losses in :mod:`sdmad_monai.losses`.
"""

__version__ = "0.1.0"

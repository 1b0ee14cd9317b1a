"""EoS-FM, an ensemble of frozen remote-sensing specialists, for the PANGAEA benchmark.

The core (band adaptation, specialists, normalisation, selection and fusion)
needs only PyTorch and timm; :mod:`eos_pangaea.pangaea_encoder` adapts it to
PANGAEA's encoder interface.
"""

__version__ = "0.1.0"

__all__ = ["EoSFM", "Specialist", "SpecialistSpec", "load_specialist_specs", "__version__"]


def __getattr__(name: str):
    # Import torch only when a model class is used, so the command line and the
    # results code start fast.
    if name == "EoSFM":
        from eos_pangaea.ensemble import EoSFM

        return EoSFM
    if name in ("Specialist", "SpecialistSpec", "load_specialist_specs"):
        from eos_pangaea import specialists

        return getattr(specialists, name)
    raise AttributeError(f"module 'eos_pangaea' has no attribute {name!r}")

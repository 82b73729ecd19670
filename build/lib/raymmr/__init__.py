"""raymmr: a Ray-distributed trainer, with hyper-parameter search, for a robust medical
vision-language model (CMDPI + Robust-MMR)."""

__version__ = "0.1.0"

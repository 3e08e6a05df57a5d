"""Reproductions of the paper's experiments, runnable as ``fastexpr experiment <name>``."""

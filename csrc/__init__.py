"""Kernel sources, installed as ``fastexpr._csrc`` so the CUDA files travel as package data."""

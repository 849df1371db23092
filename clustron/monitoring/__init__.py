"""Clustron's monitoring layer."""

"""Clustron's admin layer."""

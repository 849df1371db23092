"""Clustron's messaging layer."""

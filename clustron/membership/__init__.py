"""Clustron's membership layer."""

"""Clustron's discovery layer."""

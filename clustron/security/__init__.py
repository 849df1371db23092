"""Clustron's security layer."""

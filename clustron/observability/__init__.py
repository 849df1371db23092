"""Clustron's observability layer."""

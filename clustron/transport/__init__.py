"""Clustron's transport layer."""

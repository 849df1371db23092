"""Clustron's election layer."""

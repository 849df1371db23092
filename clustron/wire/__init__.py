"""Clustron's wire layer."""

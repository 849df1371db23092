"""Clustron's testkit layer."""

"""Clustron's serializers layer."""

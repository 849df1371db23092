"""
ACME's Clustron plugins (an example of a third-party plugin package).
"""

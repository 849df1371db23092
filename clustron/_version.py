"""
The version of Clustron.
"""

__version__ = "0.1.0"

"""
Registers ACME's Clustron plugins with Twisted's plugin system.

This directory has no ``__init__.py``. Keep this module small: if it fails to
import, Twisted skips it and the plugins are simply not found.
"""

from acme_clustron.plugins import FileDiscoveryPlugin, OrdinalElectionPlugin

file_discovery = FileDiscoveryPlugin()
ordinal_election = OrdinalElectionPlugin()

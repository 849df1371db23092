"""
Finding plugins by name through Twisted's plugin system.

Built-in plugins are module-level instances in
``twisted/plugins/clustron_builtins.py``; third parties ship their own module
in their own ``twisted/plugins/`` directory and it is found here with no
change to Clustron.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from twisted.plugin import getPlugins
from zope.interface.interface import InterfaceClass

from clustron.errors import MissingPlugin
from clustron.interfaces import (
    IDiscoveryPlugin,
    IElectionPlugin,
    ISerializerPlugin,
    ITransportPlugin,
)

T = TypeVar("T")

#: The plugin kinds, by the word used in errors and configuration.
KINDS: dict[str, InterfaceClass] = {
    "transport": ITransportPlugin,
    "serializer": ISerializerPlugin,
    "discovery": IDiscoveryPlugin,
    "election": IElectionPlugin,
}


def installed(kind: str) -> dict[str, Any]:
    """
    Every installed plugin of one kind, by name.

    When two installed plugins share a name, the first one found wins (the
    order of C{twisted.plugins.__path__}); this lets a project's own checkout
    shadow an installed copy of the same plugin module.

    @param kind: one of L{KINDS}.
    @return: a dict from plugin name to plugin object.
    """
    import twisted.plugins

    found: dict[str, Any] = {}
    # getPlugins is annotated for a class, not a zope InterfaceClass.
    for plugin in getPlugins(cast("type[Any]", KINDS[kind]), twisted.plugins):
        name = getattr(plugin, "name", None)
        if isinstance(name, str) and name not in found:
            found[name] = plugin
    return found


def find(kind: str, name: str) -> Any:
    """
    The installed plugin of C{kind} called C{name}.

    @raise MissingPlugin: when there is none; its message lists the names
        that are installed.
    """
    plugins = installed(kind)
    try:
        return plugins[name]
    except KeyError:
        raise MissingPlugin(kind, name, list(plugins)) from None

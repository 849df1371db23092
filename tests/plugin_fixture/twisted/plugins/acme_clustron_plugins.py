"""
A third-party Clustron plugin, as another project would ship it.
"""

import json

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin


@implementer(IPlugin, ISerializerPlugin)
class ReversedJson:
    """
    JSON with its bytes reversed: useless, but unmistakably not built in.
    """

    name = "acme-reversed-json"
    wire_id = 200

    def dumps(self, obj):
        return json.dumps(obj).encode()[::-1]

    def loads(self, data):
        try:
            return json.loads(bytes(data)[::-1])
        except ValueError as e:
            raise SerializationError(str(e)) from None


acme_serializer = ReversedJson()

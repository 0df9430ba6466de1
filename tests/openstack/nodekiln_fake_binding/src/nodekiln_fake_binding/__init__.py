"""An ML2 mechanism driver that binds every port (test clouds have no agents).

Nova's fake virt driver plugs nothing, but Nova still needs the port bound to its host;
Neutron's own `test` driver asserts on updates, so this one just binds.
"""

from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class FakeBindingDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OVS, {portbindings.CAP_PORT_FILTER: True})
            return

"""containerd: run containerd with flags and config files made from the k4s config.

    containerd [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("containerd", __doc__)

"""kubelet: run the kubelet with flags and config files made from the k4s config.

    kubelet [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("kubelet", __doc__)

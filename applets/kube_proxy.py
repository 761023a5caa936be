"""kube-proxy: run kube-proxy with flags and config files made from the k4s config.

    kube-proxy [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("kube-proxy", __doc__)

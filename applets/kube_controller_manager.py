"""kube-controller-manager: run kube-controller-manager with flags and config files made from the k4s config.

    kube-controller-manager [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("kube-controller-manager", __doc__)

"""kube-controller-manager: run kube-controller-manager with flags and config files made from the k4s config.

    kube-controller-manager [UPSTREAM-ARGS...]
"""

from k4s.componentcli import component_cli

cli = component_cli("kube-controller-manager", __doc__)

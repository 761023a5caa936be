"""kube-apiserver: run kube-apiserver with flags and config files made from the k4s config.

    kube-apiserver [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("kube-apiserver", __doc__)

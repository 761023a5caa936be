"""kube-scheduler: run kube-scheduler with flags and config files made from the k4s config.

    kube-scheduler [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("kube-scheduler", __doc__)

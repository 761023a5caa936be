"""kube-scheduler: run kube-scheduler with flags and config files made from the k4s config.

    kube-scheduler [UPSTREAM-ARGS...]
"""

from k4s.componentcli import component_cli

cli = component_cli("kube-scheduler", __doc__)

"""etcd: run etcd, the datastore with flags and config files made from the k4s config.

    etcd [UPSTREAM-ARGS...]
"""

from applets._component import component_cli

cli = component_cli("etcd", __doc__)

"""reboot: ask init to stop the node in order and reboot.

    reboot [-f]

-f skips the orderly stop: sync and reboot at once (as root).
"""

from applets._power import power_cli

cli = power_cli("reboot", __doc__)

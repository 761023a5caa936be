"""poweroff: ask init to stop the node in order and poweroff.

    poweroff [-f]

-f skips the orderly stop: sync and poweroff at once (as root).
"""

from applets._power import power_cli

cli = power_cli("poweroff", __doc__)

"""halt: ask init to stop the node in order and halt.

    halt [-f]

-f skips the orderly stop: sync and halt at once (as root).
"""

from applets._power import power_cli

cli = power_cli("halt", __doc__)

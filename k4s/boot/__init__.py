"""The appliance's boot: PID 1 (init), kernel modules, network, power, and the
one module that talks to libc. Runs on the appliance only."""

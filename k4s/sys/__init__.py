"""The bottom layer: what k4s asks of the kernel and of /proc, for every layer above.

    libc     mount, umount, pivot_root, reboot, sethostname, kexec, finit_module (ctypes)
    kmod     the kernel-module index (modules.dep, aliases) and loading with dependencies
    zram     compressed swap in RAM
    mem      /proc/meminfo and /proc/vmstat
    process  spawn with a log file, renice every thread, reap, a function in a forked
             child (call_in_child), PID 1's kill_all
    env      the environment of every program k4s starts

Nothing here imports from k4s.boot, k4s.cluster, k4s.image or k4s.host (see
tests/unit/test_layers.py): those packages import this one, and never each other upward.
Standard library only, so PID 1 and stage 1 can import any of it.
"""

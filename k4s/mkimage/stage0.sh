#!/usr/bin/busybox sh
# k4s stage 0, written by mkimage (k4s/mkimage/stage0.sh, its at-sign names filled in from k4s.layout).
# The k4s bundle is a squashfs, kept compressed in RAM like the components: mount it and
# hand PID 1 over to k4s init. Anything failing here ends in k4s.on-failure (a poweroff by
# default) with the reason on the console, never in a kernel panic.
b=/usr/bin/busybox
$b mount -t proc -o nosuid,nodev,noexec proc /proc
# A root that containers can pivot_root(2) out of: the kernel refuses it on the initramfs
# itself (the root of every mount namespace: its own parent in mountinfo), and runc then only
# moves and chroots, which a process with CAP_SYS_CHROOT can leave. A bind mount of the RAM
# root moved over / has a parent: nothing is copied, and the script runs again inside it.
if [ "$($b awk '$5 == "/" { r = ($1 == $2) } END { print r }' /proc/self/mountinfo)" = 1 ]; then
    $b umount /proc
    $b mkdir -p /.root && $b mount --bind / /.root && cd /.root && $b mount --move . / && exec $b chroot . /init "$@"
    echo "k4s stage 0: warning: the root stays the initramfs; containers will chroot, not pivot_root"
    $b mount -t proc -o nosuid,nodev,noexec proc /proc
fi
$b mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
fail() {
    echo "k4s stage 0: error: $1"
    case " $($b cat /proc/cmdline) " in  # k4s.on-failure, as k4s init would read it
        *" k4s.on-failure=reboot "*) exec $b reboot -f ;;
        *" k4s.on-failure=halt "*) exec $b halt -f ;;
    esac
    exec $b poweroff -f
}
# Booted by stage 1: it left the signed hash of every part (the last initrd segment).
# Each part is checked before anything is mounted, the k4s bundle first of all.
if [ -f @PARTS_CHECK@ ]; then
    bad=$(cd / && $b sha256sum -c @PARTS_CHECK@ 2>&1 | $b grep -v ': OK$' | $b head -1)
    [ -z "$bad" ] || fail "$bad: differs from the signed manifest (hint: the payload was altered after stage 1 verified it; nothing was mounted)"
    echo "k4s stage 0: $($b wc -l < @PARTS_CHECK@) parts match the signed manifest"
fi
for ko in @MODULES@; do
    $b insmod "$ko" 2>/dev/null
done
if $b mount -t squashfs -o loop,ro @BUNDLE@.squashfs @BUNDLE@; then
    exec @K4S@ init "$@"
fi
fail "cannot mount @BUNDLE@.squashfs (hint: rebuild the image with make image; the kernel needs the loop and squashfs modules)"

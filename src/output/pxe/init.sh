#!/bin/sh
# imgbuild's /init: the initramfs is the whole node. Copy it into a tmpfs
# and switch_root to systemd there: runc's pivot_root cannot leave the
# initial rootfs, and a tmpfs can be sized (the initial rootfs is capped at
# half the RAM). It uses the node's own dash, coreutils and util-linux.
#   imgbuild.rootsize=SIZE  the tmpfs's size (mount's size=; default 75%)
#   imgbuild.init=PATH      what to run in it (default /sbin/init)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() {
  if [ -c /dev/kmsg ]; then
    echo "imgbuild-init: $*" >/dev/kmsg
  else
    echo "imgbuild-init: $*"
  fi
}
fail() {
  say "FAILED: $*; starting a shell"
  exec /bin/sh
}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
# the kernel opens /dev/console before /init only when the archive has one
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
size=75% init=/sbin/init
for a in $(cat /proc/cmdline); do
  case $a in
    imgbuild.rootsize=*) size=${a#*=} ;;
    imgbuild.init=*) init=${a#*=} ;;
  esac
done
mount -t tmpfs -o "size=$size,mode=0755" root /newroot ||
  fail "cannot mount a tmpfs of size=$size on /newroot"
say "copying the root into a tmpfs (size=$size)"
for e in /* /.[!.]*; do
  case $e in
    /proc | /dev | /sys | /run | /newroot | /init | '/.[!.]*') continue ;;
  esac
  cp -a "$e" /newroot/ || fail "cannot copy $e into the tmpfs"
done
mkdir -p /newroot/proc /newroot/dev /newroot/sys /newroot/run ||
  fail "cannot make the mount points in the tmpfs"
[ -x "/newroot$init" ] || fail "no $init in the root"
# switch_root moves /proc and /dev into the new root and frees this one
say "switch_root to $init"
exec switch_root /newroot "$init"

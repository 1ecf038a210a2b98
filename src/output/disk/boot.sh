#!/bin/sh
# imgbuild's boot /init for a node's disk (--format disk): the initramfs
# holds only what it takes to reach the root partition (the node's own
# dash, kmod, util-linux, coreutils and systemd-veritysetup with their
# libraries, and the kernel's storage and filesystem modules). It opens the
# read-only root (squashfs) through dm-verity, so a block that does not hash
# to the root hash on the command line is an I/O error and never data, lays
# a tmpfs over it (overlayfs: the node writes to RAM, every boot starts
# from the pristine image) and switch_roots to the root's own /init, which
# names the node, makes the state partition and starts systemd.
#   imgbuild.root=PARTUUID=U     the root partition (squashfs)
#   imgbuild.verity=PARTUUID=U   its dm-verity hash partition
#   imgbuild.roothash=HEX        the root hash
#   imgbuild.rootsize=SIZE       the tmpfs's size (mount's size=; default 75%)
# Files below /imgbuild.add in the initramfs (an initrd added to the loader
# entry) are copied onto the root before it starts.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() {
  if [ -c /dev/kmsg ]; then
    echo "imgbuild-boot: $*" >/dev/kmsg
  else
    echo "imgbuild-boot: $*"
  fi
}
fail() {
  say "FAILED: $*; starting a shell"
  exec /bin/sh
}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t sysfs sysfs /sys 2>/dev/null || true
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
# the device blkid finds for the tag $1 within $2 s (no udev here: the
# drivers make the nodes in devtmpfs as they probe)
device() {
  i=0
  until found=$(blkid -l -o device -t "$1") && [ -n "$found" ]; do
    i=$((i + 1))
    [ $i -lt "$2" ] || return 1
    sleep 1
  done
  echo "$found"
}
root='' verity='' roothash='' size=75%
# shellcheck disable=SC2013 # the command line's words
for a in $(cat /proc/cmdline); do
  case $a in
    imgbuild.root=*) root=${a#*=} ;;
    imgbuild.verity=*) verity=${a#*=} ;;
    imgbuild.roothash=*) roothash=${a#*=} ;;
    imgbuild.rootsize=*) size=${a#*=} ;;
  esac
done
[ -n "$root" ] && [ -n "$verity" ] && [ -n "$roothash" ] ||
  fail "the command line lacks imgbuild.root=, imgbuild.verity= or imgbuild.roothash="
kver=$(uname -r)
[ -e "/lib/modules/$kver/modules.dep.bin" ] || depmod -a "$kver" || say "depmod $kver failed"
for m in virtio_pci virtio_blk virtio_scsi sd_mod ahci nvme squashfs overlay dm_verity; do
  modprobe -q "$m" 2>/dev/null || true
done
data=$(device "$root" 30) || fail "no root partition $root (imgbuild.root=)"
hash=$(device "$verity" 10) || fail "no hash partition $verity (imgbuild.verity=)"
mkdir -p /run/cryptsetup
veritysetup=/lib/systemd/systemd-veritysetup
[ -x $veritysetup ] || veritysetup=/usr/lib/systemd/systemd-veritysetup
DM_DISABLE_UDEV=1 $veritysetup attach imgbuild-root "$data" "$hash" "$roothash" ||
  fail "cannot open the root $data with its hash partition $hash (dm-verity)"
dev=/dev/mapper/imgbuild-root
[ -b $dev ] || dev=/dev/dm-0
mkdir -p /lower /rw /newroot
mount -t squashfs -o ro "$dev" /lower ||
  fail "cannot mount the root $data through dm-verity (a root that does not hash to $roothash cannot be read)"
mount -t tmpfs -o "size=$size,mode=0755" rw /rw || fail "cannot mount a tmpfs of size=$size"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot ||
  fail "cannot lay a tmpfs over the root"
if [ -d /imgbuild.add ]; then
  cp -a /imgbuild.add/. /newroot/ || fail "cannot copy /imgbuild.add onto the root"
  say "copied /imgbuild.add onto the root"
fi
[ -x /newroot/init ] || fail "the root has no /init"
say "root $data (dm-verity $roothash), switch_root to its /init"
exec switch_root /newroot /init

#!/bin/sh
# imgbuild's /init: the initramfs is the whole node. Copy it into a tmpfs
# and switch_root to systemd there: runc's pivot_root cannot leave the
# initial rootfs, and a tmpfs can be sized (the initial rootfs is capped at
# half the RAM). It uses the node's own dash, coreutils and util-linux.
#   imgbuild.rootsize=SIZE  the tmpfs's size (mount's size=; default 75%)
#   imgbuild.init=PATH      what to run in it (default /sbin/init)
# A role's generic image takes its identity from the command line (a node's
# image has its own; its boot.ipxe passes none of these):
#   imgbuild.hostname=NAME  /etc/hostname and the 127.0.1.1 line of /etc/hosts
#   imgbuild.ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1
#                           the kernel's ip= syntax (nfsroot.rst; `dhcp` alone,
#                           or AUTOCONF dhcp, for DHCP): a systemd-networkd
#                           .network for DEVICE (every en*/eth* NIC when
#                           empty), systemd-networkd enabled
#   imgbuild.seed=LABEL=cidata  a role's generic image: the node and secrets
#                           layers of the node seed.iso on that volume
#                           (checked against its user-data's sha256) go
#                           into the root; without the volume, stop
# Booted from a disk (--format disk), this is the root's own /init, run by
# the disk's boot initramfs once it has laid a tmpfs over the read-only root
# (imgbuild.root= on the command line): the root is not copied, the steps
# below work on it in place.
#   imgbuild.esp=PARTUUID=U the EFI system partition it was loaded from: on
#                           its disk, systemd-repart creates (first boot) or
#                           grows the state partition (/imgbuild.repart.d:
#                           ext4, label imgbuild-state), mounted at
#                           /var/lib/imgbuild/state with etcd's and
#                           containerd's directories bound from it
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
# (from a disk's boot initramfs, switch_root has moved them here already)
[ -e /proc/self ] || mount -t proc proc /proc || fail "cannot mount /proc"
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys 2>/dev/null || true
# the kernel opens /dev/console before /init only when the archive has one
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
# a dotted netmask (or a prefix length) as a prefix length
prefix() {
  case $1 in
    *.*) ;;
    *) echo "$1"; return ;;
  esac
  n=0
  for o in $(echo "$1" | tr . ' '); do
    case $o in
      255) n=$((n + 8)) ;; 254) n=$((n + 7)) ;; 252) n=$((n + 6)) ;;
      248) n=$((n + 5)) ;; 240) n=$((n + 4)) ;; 224) n=$((n + 3)) ;;
      192) n=$((n + 2)) ;; 128) n=$((n + 1)) ;; 0) ;;
      *) return 1 ;;
    esac
  done
  echo "$n"
}
# the node's name from the command line, in the new root
set_hostname() {
  case $1 in
    *[!a-z0-9.-]* | -* | '') fail "imgbuild.hostname=$1 is not a host name" ;;
  esac
  echo "$1" >$R/etc/hostname || fail "cannot write /etc/hostname"
  hosts=$R/etc/hosts
  if [ -f $hosts ]; then
    grep -v '^127\.0\.1\.1[[:space:]]' $hosts >$hosts.new
  fi
  echo "127.0.1.1 $1" >>$hosts.new || fail "cannot write /etc/hosts"
  mv $hosts.new $hosts || fail "cannot write /etc/hosts"
  say "host name $1"
}
# the kernel's ip= syntax as a systemd-networkd .network
set_network() {
  old_ifs=$IFS IFS=:
  # shellcheck disable=SC2086 # split on ':' on purpose
  set -- $1
  IFS=$old_ifs
  client=$1 gw=${3:-} mask=${4:-} dev=${6:-} auto=${7:-} dns0=${8:-} dns1=${9:-}
  [ -n "$dev" ] || dev='en* eth*'
  units=$R/etc/systemd
  [ -e $R/lib/systemd/system/systemd-networkd.service ] ||
    [ -e $R/usr/lib/systemd/system/systemd-networkd.service ] ||
    fail "imgbuild.ip= given, but the root has no systemd-networkd"
  mkdir -p $units/network $units/system/multi-user.target.wants || fail "cannot make $units"
  {
    printf '# from the kernel command line (imgbuild.ip=), by /init\n[Match]\nName=%s\n\n[Network]\n' "$dev"
    case $client:$auto in
      dhcp:* | *:dhcp | *:on | *:any) echo 'DHCP=yes' ;;
      *)
        p=$(prefix "${mask:-24}") || fail "imgbuild.ip=: netmask $mask is not one"
        echo "Address=$client/$p"
        [ -z "$gw" ] || echo "Gateway=$gw"
        ;;
    esac
    for d in $dns0 $dns1; do echo "DNS=$d"; done
  } >$units/network/10-imgbuild-cmdline.network || fail "cannot write the .network"
  ln -sf /lib/systemd/system/systemd-networkd.service \
    $units/system/multi-user.target.wants/systemd-networkd.service || fail "cannot enable systemd-networkd"
  say "network $client on $dev"
}
# the device blkid finds for the tag $1 within $2 s (no udev here: the
# drivers make the nodes in devtmpfs as they probe); fails when there is none
device() {
  i=0
  until found=$(blkid -l -o device -t "$1") && [ -n "$found" ]; do
    i=$((i + 1))
    [ $i -lt "$2" ] || return 1
    sleep 1
  done
  echo "$found"
}
# the state partition on the disk the ESP $1 (PARTUUID=...) is on
set_state() {
  modprobe -q -a virtio_pci virtio_blk virtio_scsi sd_mod ahci nvme loop 2>/dev/null
  esp=$(device "$1" 30) || fail "no partition $1 (imgbuild.esp=)"
  disk=/dev/$(lsblk -no pkname "$esp" | head -n 1)
  [ -b "$disk" ] || fail "no disk holds $esp"
  systemd-repart --dry-run=no --no-pager --definitions=/imgbuild.repart.d "$disk" ||
    fail "systemd-repart could not make the state partition on $disk"
  part=$(device PARTLABEL=imgbuild-state 10) || fail "no imgbuild-state partition on $disk"
  st=$R/var/lib/imgbuild/state
  mkdir -p $st || fail "cannot make $st"
  mount -t ext4 "$part" $st || fail "cannot mount $part"
  for d in etcd containerd; do
    mkdir -p "$st/$d" "$R/var/lib/$d" || fail "cannot make /var/lib/$d"
    mount --bind "$st/$d" "$R/var/lib/$d" || fail "cannot bind /var/lib/$d to the state partition"
  done
  say "state on $part ($disk)"
}
# a role's generic image with a node's seed attached (its cloud-init
# seed.iso, label cidata): that node's own layers (node, secrets) from it,
# each checked against the sha256 the seed's user-data names
set_seed() {
  modprobe -q -a virtio_pci virtio_blk virtio_scsi sr_mod ahci isofs 2>/dev/null
  dev=$(device "$1" 30) || fail "no seed volume $1 (imgbuild.seed=)"
  mkdir -p /imgbuild.seed || fail "cannot make /imgbuild.seed"
  mount -t iso9660 -o ro "$dev" /imgbuild.seed || fail "cannot mount the seed $dev"
  n=0
  for f in /imgbuild.seed/layers/*-node.tar.gz /imgbuild.seed/layers/*-secrets.tar.gz; do
    [ -f "$f" ] || continue
    want=$(sed -n "s/^ *\([0-9a-f]\{64\}\)  $(basename "$f")\$/\1/p" /imgbuild.seed/user-data | head -n 1)
    got=$(sha256sum "$f" | cut -d' ' -f1)
    if [ -z "$want" ] || [ "$want" != "$got" ]; then
      fail "the seed's $(basename "$f") is not what its user-data names (sha256 $got)"
    fi
    tar -xzpf "$f" -C "${R:-/}" --numeric-owner || fail "cannot extract the seed's $(basename "$f")"
    n=$((n + 1))
  done
  umount /imgbuild.seed
  [ $n -gt 0 ] || fail "the seed $dev holds no node or secrets layer"
  say "the node's layers from the seed $dev ($n)"
}
size=75% init=/sbin/init hostname='' ip='' esp='' seed='' R=/newroot
# shellcheck disable=SC2013 # the command line's words
for a in $(cat /proc/cmdline); do
  case $a in
    imgbuild.rootsize=*) size=${a#*=} ;;
    imgbuild.init=*) init=${a#*=} ;;
    imgbuild.hostname=*) hostname=${a#*=} ;;
    imgbuild.ip=*) ip=${a#*=} ;;
    imgbuild.esp=*) esp=${a#*=} ;;
    imgbuild.seed=*) seed=${a#*=} ;;
    imgbuild.root=*) R='' ;;
  esac
done
# a kernel unpacked from its .deb (no maintainer script ran) has no module
# index: build it here, in RAM, so that modprobe and udev find the modules
kver=$(uname -r)
if [ -n "$kver" ] && [ -d "/lib/modules/$kver" ] && [ ! -e "/lib/modules/$kver/modules.dep.bin" ]; then
  if depmod -a "$kver"; then say "indexed the modules of $kver (depmod)"; else say "depmod $kver failed"; fi
fi
if [ -n "$R" ]; then
  mount -t tmpfs -o "size=$size,mode=0755" root $R ||
    fail "cannot mount a tmpfs of size=$size on $R"
  say "copying the root into a tmpfs (size=$size)"
  for e in /* /.[!.]*; do
    case $e in
      /proc | /dev | /sys | /run | $R | /init | /imgbuild.repart.d | /imgbuild.seed | '/.[!.]*') continue ;;
    esac
    cp -a "$e" $R/ || fail "cannot copy $e into the tmpfs"
  done
  mkdir -p $R/proc $R/dev $R/sys $R/run ||
    fail "cannot make the mount points in the tmpfs"
fi
[ -x "$R$init" ] || fail "no $init in the root"
# a name from imgbuild.ip= stands when imgbuild.hostname= is not given
[ -n "$hostname" ] || hostname=$(echo "$ip" | cut -s -d: -f5)
[ -z "$hostname" ] || set_hostname "$hostname"
[ -z "$ip" ] || set_network "$ip"
[ -z "$seed" ] || set_seed "$seed"
[ -z "$esp" ] || set_state "$esp"
if [ -z "$R" ]; then
  say "exec $init"
  exec "$init"
fi
# switch_root moves /proc and /dev into the new root and frees this one
say "switch_root to $init"
exec switch_root $R "$init"

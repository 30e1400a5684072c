#!/usr/bin/env bash
# Builds the tiny VM guest for tests/tests/vm_qemu.rs and network.rs: a Debian cloud
# kernel and a busybox initramfs whose /init brings up eth0 (virtio-net), takes a DHCP
# lease, pings the gateway, downloads a file through 10.0.2.2, resolves a name through
# 10.0.2.3, reaches another guest of its network, starts an echo server for a port forward
# or a peer, and reports each step on the serial console as
# "USERNET-<WHAT> ..." lines. The test passes its parameters on the kernel command line:
#   usernet_http=PORT   HTTP server on the host's loopback (GET /blob)
#   usernet_name=NAME   name to resolve through 10.0.2.3
#   usernet_echo=PORT   port of the guest's echo server (busybox nc -e cat)
#   usernet_peer=IP:PORT another guest on the same network: ping IP, then GET /blob
#                        from an HTTP server there (reported as PEER-PING, PEER-SHA256)
#
# Usage: tests/vm/build-initramfs.sh [OUTDIR]   (default: <repo>/target/vm)
# Prints the paths of the kernel and the initramfs. Idempotent: the downloaded packages
# and the result are cached in OUTDIR and rebuilt only when this script changes.
# Needs: apt-get (with package lists: apt-get update), dpkg-deb, gzip, flock, sha256sum.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/vm}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

for tool in apt-get apt-cache dpkg-deb gzip flock sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-initramfs: prerequisite missing: $tool" >&2
        exit 2
    }
done

# One build at a time (tests run in parallel threads).
exec 9>"$out/.lock"
flock 9

stamp="$(sha256sum "$0" | cut -d' ' -f1)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] &&
    [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ]; then
    echo "$out/vmlinuz"
    echo "$out/initramfs.cpio.gz"
    exit 0
fi

debs="$out/debs"
mkdir -p "$debs"
chmod 0777 "$debs" 2>/dev/null || true # apt's _apt user downloads into it

# The kernel: linux-image-cloud-amd64 is a metapackage; the image is its dependency.
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$kpkg" ]; then
    kpkg="$(ls "$debs" 2>/dev/null | sed -n 's/^\(linux-image-[0-9][^_]*-cloud-amd64\)_.*\.deb$/\1/p' | head -n1)"
fi
if [ -z "$kpkg" ]; then
    echo "build-initramfs: prerequisite missing: the package linux-image-cloud-amd64 is unknown to apt (run apt-get update)" >&2
    exit 2
fi

fetch() { # fetch PKG: download PKG's .deb into $debs unless it is there
    local pkg="$1"
    if ! ls "$debs/${pkg}"_*.deb >/dev/null 2>&1; then
        (cd "$debs" && apt-get download "$pkg" >&2) || {
            echo "build-initramfs: prerequisite missing: cannot download the Debian package $pkg (apt-get download failed; run apt-get update?)" >&2
            exit 2
        }
    fi
    ls "$debs/${pkg}"_*.deb | head -n1
}
kdeb="$(fetch "$kpkg")"
bdeb="$(fetch busybox-static)"

work="$out/work"
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox" "$work/root"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bdeb" "$work/busybox"

vmlinuz="$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)"
moddir="$(ls -d "$work"/kernel/lib/modules/*/ | head -n1)"
bb="$work/busybox/bin/busybox"
[ -x "$bb" ] || {
    echo "build-initramfs: busybox-static did not contain bin/busybox" >&2
    exit 2
}

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,usr/bin,usr/sbin,www}
cp "$bb" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

# virtio-net is a module in the cloud kernel (CONFIG_VIRTIO_NET=m, VIRTIO_PCI=m): copy it
# and its dependencies, loaded by /init in this order (no modules.dep in the package).
mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
for m in $mods; do
    f="$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)"
    if [ -z "$f" ]; then
        # built in? then nothing to load.
        if grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
            continue
        fi
        echo "build-initramfs: module $m not found in $kpkg" >&2
        exit 2
    fi
    case "$f" in
    *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
    *) echo "build-initramfs: compressed module $f is not supported" >&2 && exit 2 ;;
    esac
done
echo "$mods" >"$root/etc/modules"

cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc hook: configure the interface and print the lease on the console.
case "$1" in
deconfig)
    ifconfig "$interface" 0.0.0.0 up
    ;;
bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    [ -n "$mtu" ] && ifconfig "$interface" mtu "$mtu"
    for r in $router; do
        route add default gw "$r" dev "$interface" 2>/dev/null
        break
    done
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    echo "USERNET-LEASE ip=$ip router=$router dns=$(echo $dns) subnet=$subnet mtu=$mtu lease=$lease uptime=$(cut -d' ' -f1 /proc/uptime)"
    ;;
esac
exit 0
EOF
chmod 0755 "$root/etc/udhcpc.script"

cat >"$root/init" <<'EOF'
#!/bin/sh
# usernet test guest: every step reports one "USERNET-..." line on the console.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mark() { echo "USERNET-$*"; }
halt_now() { mark "HALT $*"; sync; poweroff -f; }

HTTP=; NAME=; ECHO=; PEER=
for w in $(cat /proc/cmdline); do
    case "$w" in
    usernet_http=*) HTTP="${w#*=}" ;;
    usernet_name=*) NAME="${w#*=}" ;;
    usernet_echo=*) ECHO="${w#*=}" ;;
    usernet_peer=*) PEER="${w#*=}" ;;
    esac
done
mark "BOOT uptime=$(cut -d' ' -f1 /proc/uptime)"

for m in $(cat /etc/modules); do
    [ -f "/lib/modules/$m.ko" ] || continue
    insmod "/lib/modules/$m.ko" || mark "ERROR insmod $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/class/net/eth0 ] || halt_now "no eth0"
mark "NIC mac=$(cat /sys/class/net/eth0/address)"
ip link set lo up
ip link set eth0 up

udhcpc -i eth0 -s /etc/udhcpc.script -f -q -n -t 15 -T 2 -A 1 || halt_now "no DHCP lease"

if ping -c 3 -W 5 10.0.2.2 >/tmp/ping 2>&1; then :; fi
mark "PING $(grep -o '[0-9]* packets received' /tmp/ping)"

if [ -n "$HTTP" ]; then
    # (no -T: busybox-static 1.35 wget segfaults with it; timeout bounds it instead)
    if timeout 60 wget -O /tmp/blob "http://10.0.2.2:$HTTP/blob" >/tmp/wget 2>&1; then
        mark "SHA256 $(sha256sum /tmp/blob | cut -d' ' -f1) size=$(wc -c </tmp/blob)"
    else
        mark "ERROR wget: $(cat /tmp/wget)"
    fi
fi

if [ -n "$NAME" ]; then
    nslookup "$NAME" 10.0.2.3 >/tmp/ns 2>&1
    while read -r line; do mark "DNS $line"; done </tmp/ns
    mark "DNS-END"
fi

if [ -n "$PEER" ]; then
    if ping -c 3 -W 5 "${PEER%:*}" >/tmp/ping-peer 2>&1; then :; fi
    mark "PEER-PING $(grep -o '[0-9]* packets received' /tmp/ping-peer)"
    ok=
    for i in 1 2 3; do
        if timeout 60 wget -O /tmp/peer "http://$PEER/blob" >/tmp/wget-peer 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    if [ -n "$ok" ]; then
        mark "PEER-SHA256 $(sha256sum /tmp/peer | cut -d' ' -f1) size=$(wc -c </tmp/peer)"
    else
        mark "ERROR peer wget: $(cat /tmp/wget-peer)"
    fi
fi

if [ -n "$ECHO" ]; then
    nc -ll -p "$ECHO" -e /bin/cat &
fi
mark "READY"
while :; do sleep 3600; done
EOF
chmod 0755 "$root/init"

tmp="$out/initramfs.cpio.gz.tmp"
(cd "$root" && find . | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -6 >"$tmp"
mv "$tmp" "$out/initramfs.cpio.gz"
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kpkg $(basename "$bdeb")" >"$out/versions"
echo "$stamp" >"$out/stamp"
rm -rf "$work"
echo "$out/vmlinuz"
echo "$out/initramfs.cpio.gz"

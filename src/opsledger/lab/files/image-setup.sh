#!/bin/sh
# Runs inside the debootstrapped bookworm root (chroot) to turn it into a systemd host image.
# Any change to this file changes the image recipe hash and so triggers a rebuild.
# Arguments: $1 = Debian mirror URL, $2 = Debian security mirror URL, $3 = the lab's package
# cache URL (apt-cacher-ng on the machine running the lab).
set -eu
mirror="$1"
security="$2"
cache="$3"

# The image starts patched: debootstrap installs the point release only, so the updates and the
# security suite are applied here, once, instead of by every lab host's first converge
# (os_baseline OS-UPD-02) and every Molecule instance's. Through the lab's package cache when it
# answers (image.py passes http_proxy, as for debootstrap).
cat > /etc/apt/sources.list <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Retries=2 update
DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Acquire::Retries=2 \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade

# apt reaches the mirror through a mirror list (apt-transport-mirror): package files (type:deb)
# come from the lab's package cache first and from the mirror when the cache does not answer;
# index files (InRelease, Packages, ...) always come straight from the mirror. Index files change
# under the same name, and neither way of sending them through apt-cacher-ng 3.7.4 holds: stored,
# concurrent refreshes collide (503s, truncated answers, a hung apt); passed through, it repeats
# the client's Host header and a strict mirror or proxy answers 400.
# A mirror tagged type:deb alone was still asked for a suite's InRelease (measured: apt-get update
# with Debug::Acquire::http), so the mirror comes first for index files, then the cache, then the
# mirror again for packages when the cache does not answer.
mkdir -p /etc/apt/mirrors
for list in "debian $mirror" "debian-security $security"; do
  name=${list%% *}
  upstream=${list#* }
  printf '%s/\tpriority:1 type:index\n%s/%s/\tpriority:2 type:deb\n%s/\tpriority:3 type:deb\n' \
    "$upstream" "$cache" "$name" "$upstream" > "/etc/apt/mirrors/$name.list"
done
cat > /etc/apt/sources.list <<SOURCES
deb mirror+file:/etc/apt/mirrors/debian.list bookworm main
deb mirror+file:/etc/apt/mirrors/debian.list bookworm-updates main
deb mirror+file:/etc/apt/mirrors/debian-security.list bookworm-security main
SOURCES

# When the cache does not answer, apt takes the next mirror on its own; this watcher (apt runs
# it before it first contacts a host) says so once per boot in the journal. It never names a
# proxy (always DIRECT) and must never fail: apt stops when a proxy detector exits non-zero.
cache_hostport=${cache#http://}
mkdir -p /usr/local/lib/opsledger
# apt runs the detector as its sandbox user (_apt): the once-per-boot marker lives in a folder
# anyone may write, made at boot by systemd-tmpfiles.
echo 'd /run/opsledger-apt 1777 root root -' > /usr/lib/tmpfiles.d/opsledger-apt.conf
cat > /usr/local/lib/opsledger/apt-cache-watch <<DETECT
#!/bin/sh
# Written into the lab image. \$1 is the URI apt is about to fetch.
case "\$1" in
  $cache/*)
    if ! timeout 2 bash -c 'exec 3<>/dev/tcp/${cache_hostport%:*}/${cache_hostport#*:}' 2>/dev/null; then
      marker=/run/opsledger-apt/direct
      if [ ! -e "\$marker" ] && touch "\$marker" 2>/dev/null; then
        logger -t opsledger-apt "package cache $cache does not answer: using the Debian mirror directly" 2>/dev/null || true
      fi
    fi ;;
esac
echo DIRECT
exit 0
DETECT
chmod 0755 /usr/local/lib/opsledger/apt-cache-watch
# Network waits are bounded: a dead mirror or resolver fails an apt run instead of hanging it.
cat > /etc/apt/apt.conf.d/01opsledger-lab <<'APTCONF'
// Written into the lab image by opsledger (lab/files/image-setup.sh).
Acquire::http::Proxy-Auto-Detect "/usr/local/lib/opsledger/apt-cache-watch";
Acquire::http::Timeout "30";
Acquire::https::Timeout "30";
Acquire::Retries "2";
APTCONF

# Lab containers run with podman's --dns none --no-hosts: these files then come from the image
# and belong to the desired state. No resolver is baked in (debootstrap copied this machine's);
# `lab up` seeds the lab network's DNS server.
rm -f /etc/resolv.conf
cat > /etc/hosts <<'HOSTS'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
HOSTS

# Each container must get its own machine id at first boot (journald, D-Bus depend on it).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/hostname

# Units that need real hardware, a tty or kernel mounts a container cannot have: left enabled
# they fail and keep the system "degraded" or stall boot.
for unit in getty@tty1.service console-getty.service serial-getty@.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-remount-fs.service systemd-firstboot.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    dev-hugepages.mount; do
  ln -sf /dev/null "/etc/systemd/system/$unit"
done

# Host keys are per host: the lab injects its own before start (so known_hosts is exact); a host
# started without them generates them at first start instead of failing sshd -t.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
# Drop-in ExecStartPre lines are appended after Debian's `sshd -t`, which fails without keys:
# reset the list so the keys are generated first.
cat > /etc/systemd/system/ssh.service.d/10-hostkeys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
systemctl enable ssh.service >/dev/null 2>&1 || true

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /tmp/* /var/tmp/*
# An emptied lists folder with a fresh mtime makes `apt: cache_valid_time` skip the update and
# every install then fails with "No package matching": make it look ancient instead.
touch -d @0 /var/lib/apt/lists

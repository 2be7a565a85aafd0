#!/bin/sh
# Runs inside the debootstrapped bookworm root (chroot) to turn it into a systemd host image.
# Any change to this file changes the image recipe hash and so triggers a rebuild.
# Arguments: $1 = Debian mirror URL, $2 = Debian security mirror URL.
set -eu
mirror="$1"
security="$2"

cat > /etc/apt/sources.list <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES

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

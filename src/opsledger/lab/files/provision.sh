#!/bin/sh
# Runs inside a lab container (podman exec) to create the non-root admin user Ansible logs in as.
# Idempotent: prints "changed=0" when the host already matched.
# Arguments: $1 = user name, $2 = SSH public key line, $3 = the lab network's DNS server
# (podman's aardvark-dns on the gateway), $4 = the host's name.
set -eu
user="$1"
pubkey="$2"
nameserver="$3"
hostname="$4"
changed=0

# podman leaves /etc/resolv.conf and /etc/hosts to the host (--dns none, --no-hosts), so the
# network role owns them across restarts. Seed them once, for the first converge; never
# overwrite what the desired state wrote.
if ! grep -q '^nameserver' /etc/resolv.conf 2>/dev/null; then
  rm -f /etc/resolv.conf  # may be a dangling link left by the image build
  printf 'search dns.podman\nnameserver %s\noptions timeout:2 attempts:2\n' "$nameserver" > /etc/resolv.conf
  changed=1
fi
if ! grep -q "[[:space:]]$hostname\$" /etc/hosts 2>/dev/null; then
  grep -q '^127.0.0.1[[:space:]]' /etc/hosts 2>/dev/null || printf '127.0.0.1\tlocalhost\n' >> /etc/hosts
  printf '127.0.1.1\t%s\n' "$hostname" >> /etc/hosts
  changed=1
fi

if ! id -u "$user" >/dev/null 2>&1; then
  # Password stays locked ("!"): key-only login.
  useradd --create-home --shell /bin/bash --groups sudo "$user"
  changed=1
fi

home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
if [ "$(cat "$home/.ssh/authorized_keys" 2>/dev/null || true)" != "$pubkey" ]; then
  printf '%s\n' "$pubkey" > "$home/.ssh/authorized_keys"
  changed=1
fi
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"

sudoers=/etc/sudoers.d/90-opsledger-lab-admin
wanted="$user ALL=(ALL:ALL) NOPASSWD: ALL"
if [ "$(cat "$sudoers" 2>/dev/null || true)" != "$wanted" ]; then
  tmp=$(mktemp)
  printf '%s\n' "$wanted" > "$tmp"
  # A broken sudoers file would lock Ansible's become out: validate before it goes live.
  visudo -cf "$tmp" >/dev/null
  install -m 0440 "$tmp" "$sudoers"
  rm -f "$tmp"
  changed=1
fi

echo "changed=$changed"

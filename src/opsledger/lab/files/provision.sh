#!/bin/sh
# Runs inside a lab container (podman exec) to create the non-root admin user Ansible logs in as.
# Idempotent: prints "changed=0" when the host already matched.
# Arguments: $1 = user name, $2 = SSH public key line.
set -eu
user="$1"
pubkey="$2"
changed=0

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

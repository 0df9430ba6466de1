# Ensure OpenSSH accepts keys only: no passwords, no keyboard-interactive, root by key only.
# Host keys are generated per node at first boot (cloud-init), never baked into the image.
# Inputs: none.
set -euo pipefail

nk_packages openssh-server
nk_write /etc/ssh/sshd_config.d/10-nodekiln.conf 0644 <<'CONF'
# nodekiln: key-only logins
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PermitEmptyPasswords no
UseDNS no
CONF
rm -f /etc/ssh/ssh_host_*
nk_enable ssh.service

# One build for both builders (`packer build -only=qemu.node` or `-only=openstack.node`): upload
# the stage directory, run the very same run-steps.sh the diskimage-builder element runs, then
# export the baked root tree for nodekiln's disk assembly (the immutable layout: read-only root,
# /var on the data partition, GRUB for BIOS and UEFI).
locals {
  sudo    = var.ssh_username == "root" ? "" : "sudo "
  execute = "chmod +x {{ .Path }}; {{ .Vars }} ${var.ssh_username == "root" ? "" : "sudo -E "}bash {{ .Path }}"
}

build {
  sources = ["source.qemu.node", "source.openstack.node"]

  provisioner "file" {
    source      = var.stage_dir
    destination = "/tmp"
  }

  # A booted base, unlike diskimage-builder's chroot, may still be in cloud-init and has no
  # package lists (images ship without them): wait, fetch the lists, then install the element's
  # package-installs.yaml in one transaction, as diskimage-builder does before the steps: the
  # same package set either way (the steps' nk_packages then find them installed).
  provisioner "shell" {
    execute_command = local.execute
    inline = [
      "cloud-init status --wait >/dev/null || true",
      "apt-get update -q",
      "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(sed -n 's/^\\([a-z0-9][a-z0-9.+-]*\\):.*/\\1/p' /tmp/nodekiln-stage/package-installs.yaml)",
    ]
  }

  # From / (70-immutable moves /root, the build user's working directory, to /var/root). The
  # steps' 90-finish removes the SSH host keys: new ones (left out of the tree) let Packer
  # reconnect should it need to.
  provisioner "shell" {
    execute_command = local.execute
    inline          = ["cd / && bash /tmp/nodekiln-stage/run-steps.sh /tmp/nodekiln-stage && ssh-keygen -A >/dev/null"]
  }

  # The tree as one archive: pseudo file systems, the stage, temporary SSH host keys (made so
  # that Packer can still reconnect after 90-finish removed the real ones) and logs left out.
  # tar exits 1 when a file changed while it was read (a log of the running build VM): fine.
  provisioner "shell" {
    execute_command = local.execute
    inline = [
      "set -eu",
      "ssh-keygen -A >/dev/null",
      "cd / && tar --numeric-owner --xattrs --xattrs-include='*' --acls -cpf - --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' --exclude='./run/*' --exclude='./tmp/*' --exclude='./var/tmp/*' --exclude='./lost+found' --exclude='./var/lost+found' --exclude='./var/log/journal/*' --exclude='./etc/ssh/ssh_host_*' --exclude='./var/cache/apt/archives/*.deb' . | zstd -q -T0 -3 -o /tmp/nodekiln-tree.tar.zst; status=(\"$${PIPESTATUS[@]}\"); [ \"$${status[0]}\" -le 1 ] && [ \"$${status[1]}\" -eq 0 ]",
      "ls -l /tmp/nodekiln-tree.tar.zst",
    ]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/nodekiln-tree.tar.zst"
    destination = var.tree_file
  }

  post-processor "manifest" {
    output     = var.manifest_file
    strip_path = false
    custom_data = {
      tree               = var.tree_file
      input_hash         = var.input_hash
      kubernetes_version = var.kubernetes_version
      containerd_version = var.containerd_version
    }
  }
}

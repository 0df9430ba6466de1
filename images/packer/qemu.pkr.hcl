# Build locally with qemu from a local base disk: KVM where it works, TCG otherwise.
# Valid on Packer 1.6.6 (Debian 12) and later: no cd_files (1.7+); the NoCloud seed ISO and the
# disk are given as -drive qemuargs, which replace Packer's default drives.
source "qemu" "node" {
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = var.base_image_checksum
  output_directory = var.output_directory
  vm_name          = "packer-disk.${var.format}"
  format           = var.format
  disk_size        = "${var.disk_size_mib}M"
  skip_compaction  = true
  disk_compression = false
  accelerator      = var.accelerator
  cpus             = var.cpus
  memory           = var.memory_mib
  headless         = true
  qemuargs = [
    ["-cpu", var.cpu_model],
    ["-drive", "file=${var.output_directory}/packer-disk.${var.format},if=virtio,cache=unsafe,discard=unmap,format=${var.format}"],
    ["-drive", "file=${var.seed_iso},if=virtio,format=raw,readonly=on"],
    ["-serial", "file:${var.console_log}"],
  ]
  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.ssh_timeout
  boot_wait            = "5s"
  shutdown_command     = "${local.sudo}shutdown -P now"
  shutdown_timeout     = "5m"
}

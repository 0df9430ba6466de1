# Variables of the nodekiln node image build. nodekiln fills them from the site's image recipe
# (nodekiln/images/packer.py writes a -var-file); defaults are for `packer validate` alone.

# --- common ---------------------------------------------------------------------------------
variable "stage_dir" {
  type        = string
  description = "Local stage directory (bake steps, run-steps.sh, env, local/), uploaded to /tmp."
  default     = "nodekiln-stage"
}
variable "tree_file" {
  type        = string
  description = "Local file the baked root tree (tar.zst) is downloaded to; nodekiln assembles the disk from it."
  default     = "tree.tar.zst"
}
variable "manifest_file" {
  type    = string
  default = "packer-manifest.json"
}
variable "ssh_username" {
  type    = string
  default = "root"
}
variable "ssh_private_key_file" {
  type        = string
  description = "Build key (qemu: injected by the NoCloud seed). Empty: the builder's own key pair."
  default     = ""
}
variable "ssh_timeout" {
  type    = string
  default = "30m"
}
variable "kubernetes_version" {
  type    = string
  default = "1.31.4"
}
variable "containerd_version" {
  type    = string
  default = "1.6.20"
}
variable "input_hash" {
  type    = string
  default = "unknown"
}
variable "image_name" {
  type    = string
  default = "nodekiln-node"
}

# --- qemu ------------------------------------------------------------------------------------
variable "base_image" {
  type        = string
  description = "Local base disk (qcow2 or raw) with cloud-init and OpenSSH: no download."
  default     = "base.qcow2"
}
variable "base_image_checksum" {
  type    = string
  default = "none"
}
variable "base_image_format" {
  type    = string
  default = "qcow2"
}
variable "output_directory" {
  type    = string
  default = "packer-output"
}
variable "disk_size_mib" {
  type    = number
  default = 6144
}
variable "format" {
  type        = string
  description = "Packer's own output disk (qcow2 or raw); the node image is assembled from the tree."
  default     = "qcow2"
}
variable "accelerator" {
  type        = string
  description = "kvm where KVM really works, else tcg (nodekiln starts a guest to find out)."
  default     = "tcg"
}
variable "cpu_model" {
  type    = string
  default = "max"
}
variable "cpus" {
  type    = number
  default = 2
}
variable "memory_mib" {
  type    = number
  default = 2048
}
variable "seed_iso" {
  type        = string
  description = "NoCloud seed ISO (nodekiln/seed.py) with the build key."
  default     = "seed.iso"
}
variable "console_log" {
  type    = string
  default = "console.log"
}

# --- openstack -------------------------------------------------------------------------------
variable "openstack_cloud" {
  type        = string
  description = "clouds.yaml entry; empty: the OS_* environment variables."
  default     = ""
}
variable "openstack_source_image" {
  type        = string
  description = "The cloud's base image (name), e.g. the research cloud's Debian 12."
  default     = "debian-12"
}
variable "openstack_flavor" {
  type    = string
  default = "m1.medium"
}
variable "openstack_networks" {
  type    = list(string)
  default = []
}
variable "openstack_floating_ip_network" {
  type    = string
  default = ""
}
variable "openstack_security_groups" {
  type    = list(string)
  default = []
}

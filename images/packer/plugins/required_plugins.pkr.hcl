# Packer >= 1.7 loads the qemu and openstack builders as plugins and needs this block (then
# `packer init`). Packer 1.6.6 (Debian 12) has them built in and rejects the block, so nodekiln
# copies this file next to the templates only when the installed Packer is 1.7 or newer.
packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.0.9"
    }
    openstack = {
      source  = "github.com/hashicorp/openstack"
      version = ">= 1.1.1"
    }
  }
}

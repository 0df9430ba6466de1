# Build inside an OpenStack cloud from the base image it provides (many research clouds allow
# nothing else). Packer creates a temporary key pair and server, nodekiln's bake steps run
# there, and the baked tree comes back to be assembled into the same disk as every other build.
# Packer 1.6.6 always snapshots the build server (skip_create_image came later): nodekiln
# deletes that snapshot, whose id the manifest post-processor records.
source "openstack" "node" {
  cloud               = var.openstack_cloud
  source_image_name   = var.openstack_source_image
  flavor              = var.openstack_flavor
  networks            = var.openstack_networks
  floating_ip_network = var.openstack_floating_ip_network
  security_groups     = var.openstack_security_groups
  image_name          = "${var.image_name}-build"
  communicator        = "ssh"
  ssh_username        = var.ssh_username
  ssh_timeout         = var.ssh_timeout
  metadata = {
    nodekiln_input_hash = var.input_hash
    kubernetes_version  = var.kubernetes_version
  }
}

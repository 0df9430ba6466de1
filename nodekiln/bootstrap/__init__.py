"""The render stage: a node's cloud-init and every file of its first boot, from the site."""

"""Node images: the recipe, the builders (diskimage-builder, Packer), manifests, ISOs."""

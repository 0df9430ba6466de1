"""nodekiln on OpenStack (openstacksdk only): upload node images, deploy and destroy sites.

spec.py       the site file's `openstack:` section
cloud.py      connecting (clouds.yaml / OS_CLOUD), counting calls, one-line errors
images.py     upload_image: Glance, once per content hash, streamed and verified
resources.py  names, the ownership tag, security-group rules mirroring the node firewall
userdata.py   the servers' user-data (nodekiln.bootstrap.render)
deploy.py     site_deploy (plan, converge, wait) and site_destroy
devcloud.py   a real local OpenStack for tests and benchmarks
"""

from nodekiln.config.openstack import OpenStackSpec

__all__ = ["OpenStackSpec"]

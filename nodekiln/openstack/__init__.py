"""nodekiln on OpenStack (openstacksdk only): upload node images, deploy and destroy sites.

(nodekiln/config/openstack.py holds the site file's `openstack:` section)
cloud.py      connecting (clouds.yaml / OS_CLOUD), counting calls, one-line errors
images.py     upload_image: Glance, once per content hash, streamed and verified
resources.py  names, the ownership tag, flavors, security-group rules mirroring the node firewall
userdata.py   the servers' user-data (nodekiln.bootstrap.render)
deploy.py     site_deploy: observe, check, plan, converge, wait (and site_destroy, from destroy.py)
observe.py    what of the site exists, as one typed object handed on
check.py      what can be checked before anything is written (flavors, image, networks, quotas)
actions.py    the plan's types: one frozen action per resource, printed and carried out alike
plan.py       from what exists to the plan (drift of ports and servers)
converge.py   carrying out the plan; tagging.py: the site's tag on what is created
wait.py       servers ACTIVE, then the API endpoint's /healthz; reach.py: can this host reach it
join.py       the join token of servers added to a running cluster
destroy.py    site_destroy and tagged_leftovers
errors.py     CheckError (nothing written) and DeployError
(testing/devcloud.py: a real local OpenStack for tests and benchmarks)
"""

from nodekiln.config.openstack import OpenStackSpec

__all__ = ["OpenStackSpec"]

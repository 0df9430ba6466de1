"""The addons stage: the site's Helm releases (CNI, storage, backups, ingress, NaaVRE) in order.

  spec.py     the site file's `addons:` section and its cross-field rules (`check_addons`)
  catalog.py  the built-in addons, one `addons/<name>.yaml` + values template each
  plan.py     the ordered plan with rendered values; plan.json
  helm.py     the helm (and kubectl) calls, through nodekiln.run
  apply.py    install/upgrade one release at a time, idempotent, resumable
"""

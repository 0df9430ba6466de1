"""Every port nodekiln renders, opens or checks: one table, each with where its number comes from.

The rulesets (bootstrap/firewall.py), the security groups (openstack/resources.py) and the site
checks (config/site.py) read these names; no port number is written anywhere else in the code.
"""

from __future__ import annotations

# kubeadm's defaults: cmd/kubeadm/app/constants/constants.go (KubeAPIServerPort,
# EtcdListenClientPort, EtcdListenPeerPort, KubeSchedulerPort, KubeControllerManagerPort).
APISERVER = 6443
ETCD_CLIENT = 2379
ETCD_PEER = 2380
KUBE_SCHEDULER = 10259
KUBE_CONTROLLER_MANAGER = 10257
# kubernetes pkg/cluster/ports/ports.go, KubeletPort.
KUBELET = 10250
# The metrics ports the monitoring addon scrapes: kubeadm's EtcdMetricsPort
# (cmd/kubeadm/app/constants/constants.go), kube-proxy's ProxyStatusPort (pkg/cluster/ports/
# ports.go), and the node exporter's (prometheus-node-exporter values.yaml service.port; a
# host-network DaemonSet, so it is a port of every node).
ETCD_METRICS = 2381
KUBE_PROXY_METRICS = 10249
NODE_EXPORTER = 9100
# kube-apiserver's default --service-node-port-range: kubernetes pkg/kubeapiserver/options/options.go,
# DefaultServiceNodePortRange = utilnet.PortRange{Base: 30000, Size: 2768}.
NODE_PORTS = (30000, 32767)
# nodekiln's own: HAProxy's frontend on the control planes, beside the kube-apiserver it balances.
LOAD_BALANCER = 7443

# Calico between nodes (docs.tigera.io "Network requirements"): BGP, Typha; VXLAN; IP-in-IP.
CALICO_TCP = (179, 5473)
CALICO_UDP = (4789,)
CALICO_PROTOCOLS = (4,)  # IP-in-IP, by number: /etc/protocols calls 94 "ipip"

ETCD = (ETCD_CLIENT, ETCD_PEER)
# kubelet, controller manager, scheduler: one contiguous range, as the rulesets open it.
COMPONENTS = (KUBELET, KUBE_SCHEDULER)

# What a control plane already listens on: the endpoint port may not be one of them.
RESERVED = {
    ETCD_CLIENT: "etcd",
    ETCD_PEER: "etcd",
    ETCD_METRICS: "etcd (metrics)",
    KUBE_PROXY_METRICS: "kube-proxy (metrics)",
    KUBELET: "kubelet",
    KUBE_CONTROLLER_MANAGER: "kube-controller-manager",
    KUBE_SCHEDULER: "kube-scheduler",
}

# The edge nodes (nodekiln/bootstrap/edge.py): the public ports; certbot's HTTP-01 server
# (--standalone, on 127.0.0.1 behind HAProxy) and HAProxy's health frontend are nodekiln's own.
HTTP = 80
HTTPS = 443
ACME_STANDALONE = 8402
EDGE_HEALTH = 8405

# Ensure nftables is installed and loads a base ruleset at boot: inbound default-deny except
# loopback, established traffic, ICMP, SSH and DHCP. Site/role rules (API server, etcd,
# kubelet, VRRP, CNI) are added by cloud-init as files in /etc/nftables.d/.
# Inputs: none.
set -euo pipefail

nk_packages nftables
mkdir -p /etc/nftables.d
nk_write /etc/nftables.conf 0755 <<'CONF'
#!/usr/sbin/nft -f
# nodekiln base ruleset; per-site rules: /etc/nftables.d/*.nft (written by cloud-init)
flush ruleset

table inet nodekiln {
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport 22 accept
        udp dport { 67, 68, 546, 547 } accept
        jump site
    }
    chain site {
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
    }
    chain output {
        type filter hook output priority filter; policy accept;
    }
}

include "/etc/nftables.d/*.nft"
CONF
nk_enable nftables.service

"""The edges: TUN, UDP sockets, DNS listeners, forwarding to the upstream transports, netlink, nftables and
list downloads. Library and OS errors become dnsguard's errors here, where they arise; `fake` and
`upstream.fake` hold the in-memory stand-ins that let the layers above be tested without root."""

"""The application: the daemons (up, server, resolve), the tunnel shell, reloads, the HTTP API and metrics.

Composition happens here and only here: the cores (config, filter, policy, dns, wireguard, lifecycle)
decide, the edges (net) move bytes, and these modules wire the two together and run them.
"""

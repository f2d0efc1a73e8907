"""Integration tests: real sockets on 127.0.0.1, twistd processes, redis-server, a Redis Cluster, Chromium, Node."""

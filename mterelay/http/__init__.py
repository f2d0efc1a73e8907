"""HTTP pieces of the relay: servers, clients, connection pools."""

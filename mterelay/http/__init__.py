"""HTTP plumbing shared by the routes (web/) and the client (client/): wire names, header rules,
bodies, agents and pools, timeouts, answers, and the shims over library internals."""

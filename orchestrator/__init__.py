"""llamaherd control plane and the `llamaherd` command line."""

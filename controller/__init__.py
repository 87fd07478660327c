"""The unprivileged controller: discovery, gossip and path selection."""

"""The minimal root helper: applies WireGuard peers and /32 routes on request."""

"""How the mesh is shown to people (shared by the CLI and the lab's demo)."""

from __future__ import annotations


def path_text(node: dict) -> str:
    """How a node is reached, for people: direct, via relays, unreachable, or left (it announced
    its departure)."""
    if node.get("left"):
        return "left"
    if not node["reachable"]:
        return "unreachable"
    return "direct" if not node["via"] else "via " + ",".join(node["via"])

"""The names one benchmark set goes by in different packs and papers (B100 / BSD100 / BSDS100).

One table, so that loading a set (its folder may use any of the names) and reporting it beside
the paper's numbers (which use another) agree on what is the same set.
"""

from __future__ import annotations

_SAME_SET: tuple[tuple[str, ...], ...] = (("B100", "BSD100", "BSDS100"),)


def set_aliases(name: str) -> tuple[str, ...]:
    """`name` first, then the other names of the same set (matched case-insensitively)."""
    for group in _SAME_SET:
        if name.lower() in (n.lower() for n in group):
            return (name, *(n for n in group if n != name))
    return (name,)

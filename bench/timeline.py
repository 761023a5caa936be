"""The boot as a picture: one bar per service of the node's graph, from when it could have
started (what it waits for was ready) through its start to its first ready, and the critical
path to node Ready marked. An SVG written by hand: a few rectangles need no plotting library."""

from __future__ import annotations

from html import escape

from k4s.cluster import services

ROW, LEFT, WIDTH, TOP = 22, 190, 760, 34


def svg(spans: dict[str, dict[str, float]], kernel_to_node: float, title: str) -> str:
    """spans: service -> {"start": s, "ready": s}, seconds since kernel start; kernel_to_node:
    when the node's supervisor started (its graph's zero), for the services with no wait."""
    ready_at = {n: sp.get("ready") for n, sp in spans.items()}
    could = services.deps_ready(ready_at)
    path = set(services.critical_path(ready_at))
    names = [n for n, _ in services.GRAPH if n in spans]
    end = max([t for sp in spans.values() for t in sp.values()] + [1.0])
    scale = WIDTH / (end * 1.05)
    x = lambda t: LEFT + t * scale  # noqa: E731
    height = TOP + ROW * len(names) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-weight="bold">{escape(title)}</text>']
    for tick in range(0, int(end) + 1, 10):
        out.append(f'<line x1="{x(tick):.1f}" y1="{TOP - 6}" x2="{x(tick):.1f}" y2="{height - 30}" stroke="#ddd"/>'
                   f'<text x="{x(tick):.1f}" y="{height - 14}" text-anchor="middle">{tick} s</text>')
    for i, name in enumerate(names):
        y, sp = TOP + i * ROW, spans[name]
        start, ready = sp.get("start"), sp.get("ready")
        c = could.get(name)
        c = kernel_to_node if c == 0.0 else c
        bold = ' font-weight="bold"' if name in path else ""
        out.append(f'<text x="{LEFT - 8}" y="{y + 14}" text-anchor="end"{bold}>{escape(name)}</text>')
        if c is not None and start is not None and start > c:  # waited with what it needs ready
            out.append(f'<rect x="{x(c):.1f}" y="{y + 5}" width="{(start - c) * scale:.1f}" height="8" fill="#f2c14e"/>')
        if start is not None:
            stop = ready if ready is not None else end
            fill = "#c0392b" if name in path else "#5b8def"
            out.append(f'<rect x="{x(start):.1f}" y="{y + 2}" width="{max((stop - start) * scale, 1.5):.1f}" '
                       f'height="14" fill="{fill}"><title>{escape(name)}: start {start:.1f} s, ready '
                       f'{"-" if ready is None else f"{ready:.1f} s"}</title></rect>')
    out.append(f'<text x="10" y="{height - 2}" fill="#555">red: the critical path to node Ready; blue: another '
               'service from its start to ready; yellow: ready to start but not started yet</text></svg>')
    return "\n".join(out) + "\n"

"""Regenerate the stage diagram in spec.md from the state machines' transition tables.

Usage: python protocols/secagg/gen_diagram.py [--check]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securefl.protocol.secagg import CLIENT_TRANSITIONS, SERVER_TRANSITIONS

SPEC = Path(__file__).parent / "spec.md"
BEGIN = "<!-- BEGIN GENERATED DIAGRAM (gen_diagram.py) -->"
END = "<!-- END GENERATED DIAGRAM -->"


def _mermaid(title: str, table: Mapping[tuple[Any, type], Any], first: Any) -> list[str]:
    lines = ["```mermaid", "stateDiagram-v2", f"    %% {title}", f"    [*] --> {first.name}"]
    for (state, event), tr in table.items():
        lines.append(f"    {state.name} --> {tr.next_state.name}: {event.__name__} / {tr.handler}")
    lines += ["    DONE --> [*]", "```"]
    return lines


def render() -> str:
    client_first = next(iter(CLIENT_TRANSITIONS))[0]
    server_first = next(iter(SERVER_TRANSITIONS))[0]
    body = [
        "Client (a (state, input) pair not listed, or an error in a handler, raises and moves the "
        "machine to FAILED, which accepts nothing):",
        "",
        *_mermaid("client", CLIENT_TRANSITIONS, client_first),
        "",
        "Server (Deadline is the transport's local timer event):",
        "",
        *_mermaid("server", SERVER_TRANSITIONS, server_first),
    ]
    return "\n".join([BEGIN, *body, END])


def main() -> int:
    text = SPEC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    if "--check" in sys.argv:
        if new != text:
            print("spec.md diagram is out of date; run python protocols/secagg/gen_diagram.py")
            return 1
        return 0
    SPEC.write_text(new)
    print(f"updated {SPEC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

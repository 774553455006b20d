"""Regenerate the state diagrams in spec.md from the CKKS roles' transition tables.

Usage: python protocols/ckks/gen_diagram.py [--check]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securefl.protocol.ckks import (
    CLIENT_TRANSITIONS,
    KEY_HOLDER_TRANSITIONS,
    SERVER_TRANSITIONS,
)

SPEC = Path(__file__).parent / "spec.md"
BEGIN = "<!-- BEGIN GENERATED DIAGRAM (gen_diagram.py) -->"
END = "<!-- END GENERATED DIAGRAM -->"


def _mermaid(title: str, table: Mapping[tuple[Any, type], Any]) -> list[str]:
    first = next(iter(table))[0]
    lines = ["```mermaid", "stateDiagram-v2", f"    %% {title}", f"    [*] --> {first.name}"]
    for (state, event), tr in table.items():
        handler = tr.handler.__name__.lstrip("_")
        lines.append(f"    {state.name} --> {tr.next_state.name}: {event.__name__} / {handler}")
    lines.append("```")
    return lines


def _states(table: Mapping[tuple[Any, type], Any]) -> list[str]:
    states = dict.fromkeys(s for key in table for s in (key[0], table[key].next_state))
    return [f"- `{s.name}`: {s.value}" for s in states]


def render() -> str:
    body = [
        "Generated from `CLIENT_TRANSITIONS`, `SERVER_TRANSITIONS` and `KEY_HOLDER_TRANSITIONS`",
        "(`securefl/protocol/ckks/`). A (state, input) pair not listed is refused and changes",
        "nothing: a local call out of order raises StateError, a peer's message RemoteProtocolError",
        "(client), StateError (server: the stage is over or has not begun) or",
        "DecryptionRefusedError (key holder).",
        "",
        "Client, per (session, round):",
        "",
        *_states(CLIENT_TRANSITIONS),
        "",
        *_mermaid("client", CLIENT_TRANSITIONS),
        "",
        "Server, in its round (CloseCommitments and CloseReveals are the transport's deadlines):",
        "",
        *_states(SERVER_TRANSITIONS),
        "",
        *_mermaid("server", SERVER_TRANSITIONS),
        "",
        "Key holder, per (session, round) (the verifier is stateless: one VerifyRequest, one",
        "CoSignature):",
        "",
        *_states(KEY_HOLDER_TRANSITIONS),
        "",
        *_mermaid("key holder", KEY_HOLDER_TRANSITIONS),
    ]
    return "\n".join([BEGIN, *body, END])


def main() -> int:
    text = SPEC.read_text()
    if BEGIN not in text:
        text = text.replace("\n## Round\n", f"\n## State machines\n{BEGIN}\n{END}\n\n## Round\n", 1)
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    if "--check" in sys.argv:
        if new != SPEC.read_text():
            print("spec.md diagram is out of date; run python protocols/ckks/gen_diagram.py")
            return 1
        return 0
    SPEC.write_text(new)
    print(f"updated {SPEC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the MIDI adapters (`midi_jack`, `midi_rtmidi`) share: their base `Link`, the port they
follow by a pattern (`Follow`, `match_port`), and the CCs picked out of raw messages (`cc_arrays`).
No MIDI library is imported here.
"""
import re
import threading

import numpy as np

from neuraldx7_jax.errors import Error


def cc_arrays(messages):
    """(CC numbers, values): int arrays of the control-change messages among raw MIDI messages
    (any channel), in order."""
    ccs = [m for m in messages if len(m) == 3 and m[0] & 0xF0 == 0xB0 and m[1] < 128 and m[2] < 128]
    return np.array([m[1] for m in ccs], np.int64), np.array([m[2] for m in ccs], np.int64)


def match_port(pattern, names, role):
    """The one name in `names` that `pattern` picks: the exact name, else the names holding it
    (case-insensitive), else those a case-insensitive regex search finds."""
    if pattern in names:
        return pattern
    found = [n for n in names if pattern.lower() in n.lower()]
    if not found:
        try:
            found = [n for n in names if re.search(pattern, n, re.IGNORECASE)]
        except re.error:
            pass
    if len(found) == 1:
        return found[0]
    if not found:
        raise Error(f"no MIDI {role} matches {pattern!r}; there are: {', '.join(names) or 'none'}")
    raise Error(f"{pattern!r} matches several MIDI {role}s: {', '.join(found)}; be more specific")


class Follow:
    """A port we connect to by a pattern (`what`: controller or synth). When it goes away, `update`
    waits for a port the same pattern picks and connects that one."""

    def __init__(self, what, pattern, name):
        self.what, self.pattern, self.name = what, pattern, name
        self.role = "source" if what == "controller" else "destination"

    def update(self, names, connected, connect):
        """Lines saying what changed, given the port names there are now; `connected(name)` and
        `connect(name)` do the backend's part."""
        if not self.pattern or self.name in names and connected(self.name):
            return []
        lines = []
        if self.name:
            lines.append(f"the {self.what} port {self.name} went away; waiting for a port matching "
                         f"{self.pattern!r}")
            self.name = None
        try:
            name = match_port(self.pattern, names, self.role)
            connect(name)
        except Error:
            return lines
        self.name = name
        return lines + [f"{self.what}: reconnected to {name}"]


class Link:
    """What the adapters share. Each feeds an engine the messages that arrive and sends what it
    returns, counting voices `sent` and those that `failed`; `stopped` is set (with a `reason`)
    when the backend goes away. Each defines `poll` (lines saying what changed in its ports),
    `ports` (our two ports' names), `close`, and the static `list_ports` and `send_messages`.
    `xruns`, `late`, `changed` and `dropped` (where input may have been lost: see
    `midi_jack.JackInput`) are None where the backend cannot count them."""

    xruns = late = changed = dropped = None

    def __init__(self, engine, controller, synth):
        """`controller` and `synth`: the `Follow`s of our two ports."""
        self.engine, self.sent, self.failed = engine, 0, 0
        self.stopped, self.reason = threading.Event(), None
        self._controller, self._synth = controller, synth

    controller = property(lambda self: self._controller.name)
    synth = property(lambda self: self._synth.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

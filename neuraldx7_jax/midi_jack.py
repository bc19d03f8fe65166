"""The JACK adapter of live control (`JackLink`), its input reader (`JackInput`), and JACK's side of
listing ports and sending files. The jack module is imported where it is used (`import_jack`), so
a host without libjack still has rtmidi, and libjack's own lines stay off the terminal: our
Errors say what was tried and what to try instead.
"""
import threading
import time

import numpy as np

from neuraldx7_jax.errors import Error
from neuraldx7_jax.midi_link import Follow, Link, cc_arrays, match_port

RESEND_CYCLES = 100  # an xrun up to this many cycles (0.5 s at 256/48k) after a new voice sends it again
SETTLE_CYCLES = 20  # this many quiet cycles (0.1 s) after a new voice, it goes out once more
SEND_SETTLE_CYCLES = 8  # `send`: cycles waited after connecting and after the last message


_JACK_QUIET = []  # set once libjack's own lines are kept off the terminal


def import_jack():
    """The jack module, with libjack's error and info lines (also those of rtmidi's JACK API)
    kept off the terminal from now on: our Errors say what happened and what to try instead."""
    try:
        import jack
    except OSError as e:
        raise Error(f"the JACK library is not installed ({e}); try --backend rtmidi") from None
    if not _JACK_QUIET:
        jack.set_error_function(lambda message: None)
        jack.set_info_function(lambda message: None)
        _JACK_QUIET.append(True)
    return jack


def _jack_client(name, jack):
    """An inactive JACK client; a clear Error when no server runs."""
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError:
        raise Error("cannot reach a JACK server: start one (jackd or qjackctl), or try "
                    "--backend rtmidi") from None


def jack_running():
    """Whether a JACK server answers (libjack installed and a server running)."""
    try:
        _jack_client("neuraldx7-probe", import_jack()).close()
    except Error:
        return False
    return True


def _jack_ports(client):
    """(sources, destinations): MIDI ports of other clients that send / receive."""
    own = client.name + ":"
    names = lambda **kw: [p.name for p in client.get_ports(is_midi=True, **kw) if not p.name.startswith(own)]
    return names(is_output=True), names(is_input=True)


class JackInput:
    """A JACK MIDI input port's CCs, taken out of its buffer at the start of the process callback
    with array work that does not grow with the number of events in Python.

    In JACK2 an input port reads the writer's buffer in place, and the writer clears it in its
    next cycle, which on an asynchronous server may start while this cycle's callback still runs;
    going through a full buffer (about 2,700 CCs) one event at a time in Python takes longer than
    a period, and jack-client's iterator then stops silently. So `read` copies the buffer (one
    memmove), checks that it did not change during the copy (else copies it again and counts it
    in `changed`), and picks the 3-byte CC events out of the copy with numpy. It knows JACK2's
    buffer layout (a header, then 12-byte events with up to 4 bytes inline) by its magic number;
    another layout (JACK1) is read through jack-client's iterator. `late` counts the reads that
    did not start one period after the one before (the server's cycle had moved on: the writer
    may have cleared the buffer first), `dropped` the events that the writers upstream could not
    put in the buffer (JACK's lost-event count)."""

    MAGIC = 0x900DF00D  # JACK2's JackMidiBuffer: magic, size, frames, write_pos, events, lost (uint32)
    HEADER, EVENT = 24, 12  # bytes of its header and of each event (time, size, 4 data bytes)
    TRIES = 3  # copies of a buffer that keeps changing before the last is taken as it is

    def __init__(self, port, client, jack):
        self.port, self.client, self._ffi, self._lib = port, client, jack._ffi, jack._lib
        self.changed = self.dropped = self.late = 0
        self._frame = None  # the cycle's first frame at the last read
        self._copy = np.zeros(1 << 15, np.uint8)  # grown (once) to the server's MIDI buffer size

    def read(self):
        """(CC numbers, values): int arrays of this cycle's CC messages, in order."""
        frame, blocksize = self.client.last_frame_time, self.client.blocksize
        if self._frame is not None and (frame - self._frame) % 2 ** 32 != blocksize:
            self.late += 1
        self._frame = frame
        buf = self._lib.jack_port_get_buffer(self.port._ptr, blocksize)
        header = self._ffi.cast("uint32_t *", buf)
        if header[0] != self.MAGIC:
            return cc_arrays([bytes(data) for _, data in self.port.incoming_midi_events()])
        size = header[1]
        if size > len(self._copy):
            self._copy = np.zeros(size, np.uint8)
        live = np.frombuffer(self._ffi.buffer(buf, size), np.uint8)
        changed = False
        for _ in range(self.TRIES):
            events = header[4]
            count = min(events, (size - self.HEADER) // self.EVENT)
            used = self.HEADER + count * self.EVENT
            np.copyto(self._copy[:used], live[:used])
            if header[4] == events and np.array_equal(self._copy[:used], live[:used]):
                break
            changed = True
        self.changed += changed
        self.dropped += int(self._copy[20:24].view(np.uint32)[0])
        events = self._copy[self.HEADER:used].reshape(count, self.EVENT)
        sizes, data = events[:, 4:8].view(np.uint32)[:, 0], events[:, 8:11]
        cc = (sizes == 3) & (data[:, 0] & 0xF0 == 0xB0) & (data[:, 1] < 128) & (data[:, 2] < 128)
        return data[cc, 1].astype(np.int64), data[cc, 2].astype(np.int64)


class JackLink(Link):
    """The JACK adapter: a client with a MIDI input `control` and output `synth`. Each cycle its
    process callback applies the cycle's CCs and, when the engine has something due, writes one
    voice: the newest. After an xrun (up to RESEND_CYCLES after a new voice), a failed write or the
    synth's return, it sends the current voice again, and once more SETTLE_CYCLES after the last
    new voice or reconnection (an overloaded server drops some messages without an xrun, and a
    connection just made may not carry the first), so the synth ends on the final position.
    Each counter has one writer: xruns the notification thread, reconnects the main thread (poll),
    the rest the process callback."""

    def __init__(self, engine, *, controller=None, synth=None, api=None, name="neuraldx7"):
        """`api` is rtmidi's and unused here, so that both adapters open alike."""
        jack = import_jack()
        self.xruns = 0
        self._xruns_seen = self.cycles = 0  # cycles: process callbacks run so far
        self._new_at = -RESEND_CYCLES  # the cycle of the last new voice
        self.reconnects = self._reconnects_seen = 0  # the synth came back: send it the voice
        self._changed = threading.Event()  # a port came or went
        self.client = client = _jack_client(name, jack)
        self.inport = client.midi_inports.register("control")
        self.input = JackInput(self.inport, client, jack)
        self.outport = client.midi_outports.register("synth")
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(self._shutdown)
        client.set_port_registration_callback(lambda port, register: self._changed.set(), only_available=False)
        self._jack_error = jack.JackError
        try:
            sources, destinations = _jack_ports(client)
            super().__init__(engine, Follow("controller", controller, controller and match_port(
                controller, sources, "source")), Follow("synth", synth, synth and match_port(
                    synth, destinations, "destination")))
            client.activate()
            if self.controller:
                client.connect(self.controller, self.inport)
            if self.synth:
                client.connect(self.outport, self.synth)
        except BaseException:
            client.close()
            raise

    late = property(lambda self: self.input.late)  # cycles whose input was read late
    changed = property(lambda self: self.input.changed)  # input buffers that changed while read
    dropped = property(lambda self: self.input.dropped)  # events a full buffer refused upstream

    def _process(self, frames):
        engine = self.engine
        engine.receive(*self.input.read())
        self.cycles += 1
        if self.xruns != self._xruns_seen:
            self._xruns_seen = self.xruns
            if self.cycles - self._new_at <= RESEND_CYCLES:
                engine.resend()
        if self.cycles - self._new_at == SETTLE_CYCLES:
            engine.resend()
        if self.reconnects != self._reconnects_seen:
            self._reconnects_seen = self.reconnects
            self._new_at = self.cycles  # a port that came back: as a new voice for the resends above
            engine.resend()
        self.outport.clear_buffer()
        if engine.due():
            if engine.fresh():
                self._new_at = self.cycles
            try:
                self.outport.write_midi_event(0, engine.update())
                self.sent += 1
            except self._jack_error:
                self.failed += 1
                engine.resend()

    def _xrun(self, delay_usecs):
        self.xruns += 1

    def _shutdown(self, status, reason):
        self.reason = reason
        self.stopped.set()

    def poll(self):
        """Outside the callback, now and then: reconnects a port that came back after it went
        away. Returns lines saying what changed."""
        if not self._changed.is_set() or self.stopped.is_set():
            return []
        self._changed.clear()
        sources, destinations = _jack_ports(self.client)

        def connect(source, destination):
            try:
                self.client.connect(source, destination)
            except self._jack_error as e:  # gone again already
                raise Error(str(e)) from None

        lines = self._controller.update(sources, self.inport.is_connected_to,
                                        lambda name: connect(name, self.inport))
        synth = self._synth.update(destinations, self.outport.is_connected_to,
                                   lambda name: connect(self.outport, name))
        if synth and synth[-1].startswith("synth: reconnected"):
            self.reconnects += 1
        return lines + synth

    def ports(self):
        """Our two ports' full names, for the user to connect by hand."""
        return self.inport.name, self.outport.name

    def close(self):
        try:
            self.client.deactivate()
        except self._jack_error:  # the server is gone
            pass
        self.client.close()

    @staticmethod
    def list_ports(api=None):
        client = _jack_client("neuraldx7-ports", import_jack())
        try:
            return _jack_ports(client)
        finally:
            client.close()

    @staticmethod
    def send_messages(messages, port, api=None, gap=0.1, timeout=10.0):
        jack = import_jack()
        client = _jack_client("neuraldx7-send", jack)
        try:
            name = match_port(port, _jack_ports(client)[1], "destination")
            outport = client.midi_outports.register("out")
            pending, cycles, failed = [], [0], []
            cycled = threading.Condition()

            def process(frames):
                outport.clear_buffer()
                if pending:
                    try:
                        outport.write_midi_event(0, pending.pop())
                    except jack.JackError as e:
                        failed.append(str(e))
                with cycled:
                    cycles[0] += 1
                    cycled.notify_all()

            def run_cycles(n):
                """Waits until `n` more cycles have run and nothing is pending (cycles, not seconds:
                a loaded server is slow)."""
                with cycled:
                    end = cycles[0] + n
                    if not cycled.wait_for(lambda: cycles[0] >= end and not pending, timeout):
                        raise Error(f"JACK did not run a cycle in {timeout:g} s")

            client.set_process_callback(process)
            client.activate()
            client.connect(outport, name)
            run_cycles(SEND_SETTLE_CYCLES)  # the connection is in the server's graph
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                pending.append(bytes(message))
                run_cycles(1)
                if failed:
                    raise Error(f"JACK could not send a {len(message)}-byte message ({failed[0]})")
            run_cycles(SEND_SETTLE_CYCLES)  # the last one has been delivered
            return name
        finally:
            client.close()

"""Run control packets: continue, step, vCont, kill, and the stop replies they end with."""
from __future__ import annotations

import traceback

from unicorn.x86_const import UC_X86_REG_RIP

from ..machine.machine import EXIT_LIMIT
from ..machine.vcpu import State
from .common import (
    _CHANGES,
    _RESUMED,
    E_BADARG,
    E_INTERNAL,
    E_NOTHREAD,
    EXIT_KILLED,
    SIGABRT,
    SIGINT,
    SIGTRAP,
    log,
)
from .protocol import (
    ACK,
    INTERRUPT,
    NAK,
    BadPacket,
    Packet,
    ProtocolError,
    parse_hex_int,
)


class RunControl:
    """GdbServer methods (a mixin): running the machine in slices and reporting its stops."""

    def _exited(self) -> bool:
        return self.machine.exit_requested

    def _current_vcpu(self) -> int:
        turn = getattr(self.machine, "_turn", None)
        if turn is not None:
            return turn[0].index
        return self.stop_thread

    def _finish(self) -> None:
        m = self.machine
        if not self.finished:
            self.finished = True
            m.finish()
            ex = getattr(self.engine, "_exited", None)
            if callable(ex):
                ex()
            self._stopped(getattr(self.engine, "stop_reason", "")
                          or f"the run ended: status {m.exit_status} ({m.exit_reason})")

    def _run_slice(self) -> None:
        """Run every vCPU for about `slice_seconds` of wall time (one Machine.step call, cut short
        by the preempter), then report a stop if there was one."""
        m = self.machine
        if self._exited():
            self._on_stopped_by_exit()
            return
        limit = m.config.max_insns
        m.debug_stop = None
        self._count_ready.clear()  # a plain emu_start drops Unicorn's instruction-count hook
        self._preempter.arm()
        try:
            m.pause_requested = False
            m.step(until=limit)
        except Exception as e:
            self._preempter.disarm()
            self._machine_failed(e)
            return
        finally:
            self._preempter.disarm()
        m.pause_requested = False
        if limit is not None and m.now >= limit and not m.exit_requested:
            m.request_exit(EXIT_LIMIT, f"instruction limit {limit} reached")
        if m.exit_requested:
            self._on_stopped_by_exit()
        elif m.debug_stop is not None:
            stop = m.debug_stop
            m.debug_stop = None
            if self.mode == "running":
                self._report(self._debug_stop_reply(stop), stop.vcpu, self._debug_stop_text(stop))
            elif self.mode == "free" and self.shared and stop.id is not None:
                # no gdb: gdb's points are gone, so this is one of the TUI's; it stops the run
                # until a gdb attaches and continues it
                self._report(self._debug_stop_reply(stop), stop.vcpu,
                             self._debug_stop_text(stop) + " (attach gdb to go on)")

    def _on_stopped_by_exit(self) -> None:
        self._finish()
        if self.mode == "free" and not self.shared:
            self.mode = "stopped"
        elif self.mode in ("running", "free"):
            was = self.mode
            self.mode = "stopped"
            self._say(f"the run ended: status {self.machine.exit_status} ({self.machine.exit_reason})")
            if was == "running":
                self.last_stop = self._exit_reply()
                self._service(force=True)
                if self.sess is not None:
                    self.sess.send(self.last_stop)

    def _machine_failed(self, e: BaseException) -> None:
        text = f"apfdbg: the machine failed: {type(e).__name__}: {e}"
        log.error("%s\n%s", text, traceback.format_exc())
        self.broken = text
        vcpu = self._current_vcpu()
        self._stopped(text)
        if self.shared:
            self.engine.error = text
        if self.mode == "running" and self.sess is not None:
            self.sess.send("O" + (text + "\n").encode().hex())
            self._report(self._stop_reply(SIGABRT, vcpu), vcpu, text)
        else:
            if self.sess is None:
                self._say(text)
                if not self.shared:  # running without gdb nor TUI: nobody can look at it, give up
                    self._stop.set()
            self.mode = "stopped"
            self.stop_thread = vcpu

    def _report(self, reply: str, vcpu: int, why: str = "") -> None:
        self.mode = "stopped"
        self._stopped(why or f"gdb: stopped at {self._where(vcpu)}")
        self.stop_thread = vcpu
        self.g_thread = self.c_thread = None
        self.last_stop = reply
        self._service(force=True)  # the TUI has the stop before gdb does
        if self.sess is not None:
            self.sess.send(reply)

    def _resume(self) -> object:
        if self._exited():
            self._finish()
            self.last_stop = self._exit_reply()
            return self.last_stop
        if self.broken:
            return E_INTERNAL
        self.mode = "running"
        return _RESUMED

    def _run_due(self) -> None:
        tl = self.machine.timeline
        due = tl.next_due()
        if due is not None and due <= tl.now:
            tl.run_due()

    def _step(self, idx: int) -> object:
        """One instruction (or the event due first) of vCPU `idx`, the others frozen.

        A vCPU that can not run now (hlt, halted by the host, stalled on a page) lets virtual time
        pass to the host's next timed event (page-in, timer) until it can; the other vCPUs stay
        frozen meanwhile. One that can never run again (hlt with IF=0, shut down) reports the stop
        at once, having done nothing."""
        m = self.machine
        if self._exited():
            return self._resume()
        if self.broken:
            return E_INTERNAL
        v = m.vcpus[idx]
        if idx not in self._count_ready:
            # Unicorn 2.1.4 installs its count hook (what stops emu_start after one instruction)
            # on the first counted emu_start without dropping blocks translated before: such a
            # block never stops, so the step would run on forever. Translate afresh.
            v.uc.ctl_flush_tb()
            self._count_ready.add(idx)
        m.debug_stop = None
        m.pause_requested = False
        tl = m.timeline
        try:
            retries = 0
            for n in range(1_000_000):
                result = v.step()
                self._run_due()
                if result in ("instruction", "event", "exited") or m.exit_requested:
                    break
                if v.state in (State.STOPPED, State.SHUTDOWN):
                    break
                if result == "blocked" and v.state is State.RUNNING and retries < 3:
                    retries += 1
                    continue  # an exit to the host happened (e.g. an async PF queued): go on
                retries = 0
                due = tl.next_due()
                if due is None:
                    break
                tl.now = max(tl.now, due)
                tl.run_due()
                if n % 256 == 255 and (self._interrupt_waiting() or self._stop.is_set()):
                    m.pause_requested = False
                    self._report(self._stop_reply(SIGINT, idx), idx, f"gdb: Ctrl-C at {self._where(idx)}")
                    return None
        except Exception as e:
            self.mode = "running"
            self._machine_failed(e)
            return None
        m.pause_requested = False
        if m.exit_requested:
            self._finish()
            self.mode = "stopped"
            self.last_stop = self._exit_reply()
            return self.last_stop
        stop = m.debug_stop
        m.debug_stop = None
        if stop is not None:
            self._report(self._debug_stop_reply(stop), idx, self._debug_stop_text(stop))
        else:
            self._report(self._stop_reply(SIGTRAP, idx), idx, f"gdb: stepped to {self._where(idx)}")
        return None  # _report sent it

    def _interrupt_waiting(self) -> bool:
        sess = self.sess
        if sess is None:
            return False
        events = sess.read(0)
        hit = False
        for ev in events:
            if ev is INTERRUPT:
                hit = True
            else:
                sess.backlog.append(ev)
        return hit

    @staticmethod
    def _tid(vcpu: int) -> str:
        return f"{vcpu + 1:x}"

    def _stop_reply(self, sig: int, vcpu: int, extra: str = "") -> str:
        return f"T{sig:02x}thread:{self._tid(vcpu)};{extra}"

    def _exit_reply(self) -> str:
        return f"W{self.machine.exit_status & 0xFF:02x}"

    def _debug_stop_text(self, stop) -> str:
        """The TUI's words for a breakpoint or watchpoint stop."""
        where = self._where(stop.vcpu, stop.rip)
        if stop.id is not None and stop.id not in self.point_kinds:  # a monitor or TUI point
            text = self.debugger.describe_stop(stop, self._describe_addr)
            return text if stop.reason == "event" else f"{text} (apfdbg's, not gdb's)"
        if stop.reason == "watchpoint":
            kind = {3: "read ", 4: "access "}.get(self.point_kinds.get(stop.id, 2), "")
            addr = f" {stop.address:#x}" if stop.address is not None else ""
            return f"gdb: {kind}watchpoint{addr} at {where}"
        return f"gdb: {stop.reason} at {where}"

    def _debug_stop_reply(self, stop) -> str:
        extra = ""
        if stop.id is not None and stop.id not in self.point_kinds:
            # not gdb's (a catchpoint, a monitor or TUI point): a plain SIGTRAP, and the reason as
            # console output, which gdb prints before the stop
            if self.sess is not None and self.mode == "running":
                self.sess.send("O" + (f"apfdbg: {self._debug_stop_text(stop)}\n").encode().hex())
        elif stop.reason == "breakpoint":
            ztype = self.point_kinds.get(stop.id, 0)
            feat = "hwbreak" if ztype == 1 else "swbreak"
            if self.sess is not None and f"{feat}+" in self.sess.gdb_features:
                extra = f"{feat}:;"
        elif stop.reason == "watchpoint":
            ztype = self.point_kinds.get(stop.id, 2)
            name = {2: "watch", 3: "rwatch", 4: "awatch"}.get(ztype, "watch")
            addr = stop.address if stop.address is not None else 0
            extra = f"{name}:{addr:x};"
        return self._stop_reply(SIGTRAP, stop.vcpu, extra)

    def _on_event(self, ev) -> None:
        sess = self.sess
        assert sess is not None
        if isinstance(ev, Packet):
            if not sess.no_ack:
                sess.send_raw(b"+")
            log.debug("<- %r", ev.payload[:200])
            if ev.payload[:1] in _CHANGES:
                self._dirty = True   # the TUI shows it at once
            reply = self.dispatch(ev.payload)
            if self._dirty:
                self._service(force=True)  # before the reply: once gdb has it, so has the TUI
            if reply is not None and reply is not _RESUMED and self.sess is sess:
                sess.send(reply)
        elif isinstance(ev, BadPacket):
            log.info("bad packet from gdb (%s)", ev.reason)
            if ev.reason == "checksum":
                if not sess.no_ack:
                    sess.send_raw(b"-")  # gdb sends it again
            else:
                if not sess.no_ack:
                    sess.send_raw(b"+")
                sess.send(E_BADARG)
        elif ev is INTERRUPT:
            if self.mode == "running":
                vcpu = self._current_vcpu()
                self.machine.pause_requested = False
                self._report(self._stop_reply(SIGINT, vcpu), vcpu, f"gdb: Ctrl-C at {self._where(vcpu)}")
        elif ev is NAK:
            if sess.last_packet is not None and sess.resends < 8:
                sess.resends += 1
                sess.send_raw(sess.last_packet)
        elif ev is ACK:
            sess.resends = 0

    def _legacy_resume(self, step: bool, with_signal: bool, body: bytes) -> object:
        if with_signal:  # Csig[;addr]: the signal means nothing to a machine, it is dropped
            sig, _, addr = body.partition(b";")
            parse_hex_int(sig, "signal")
        else:
            addr = body
        vcpu = self.c_thread if self.c_thread is not None else self.stop_thread
        if addr:
            v = self.machine.vcpus[vcpu]
            rip = v.rip
            v.set_reg(UC_X86_REG_RIP, parse_hex_int(addr, "address"))
            self._moved(v, rip)
        if step:
            return self._step(vcpu)
        return self._resume()

    def _v_packet(self, p: bytes) -> object:
        if p == b"vCont?":
            return "vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            return self._vcont(p[6:])
        if p.startswith(b"vKill"):
            self.sess.send("OK")
            self._kill()
            return None
        if p == b"vMustReplyEmpty":
            return ""
        return ""

    def _vcont(self, text: bytes) -> object:
        """Step: the first ``s``/``S`` action names the vCPU that steps; every other vCPU stays
        frozen, whatever the other actions say (scheduler-locking step). Otherwise continue:
        every vCPU runs (a continue of one thread alone is run as a continue of all)."""
        step_vcpu: int | None = None
        cont = False
        for action in text.split(b";"):
            if not action:
                raise ProtocolError("empty vCont action")
            act, _, tid_text = action.partition(b":")
            if not act:
                raise ProtocolError(f"vCont action {action[:20]!r} without a command")
            kind = chr(act[0])
            if kind in "CS":
                parse_hex_int(act[1:], "signal")
            elif len(act) != 1 or kind not in "cs":
                raise ProtocolError(f"vCont action {action[:20]!r} is not supported")
            tid = self._parse_tid(tid_text) if tid_text else -1
            if tid not in (-1, 0) and not self._valid(tid):
                return E_NOTHREAD
            if kind in "sS":
                if step_vcpu is None:
                    if tid in (-1, 0):
                        step_vcpu = self.c_thread if self.c_thread is not None else self.stop_thread
                    else:
                        step_vcpu = tid - 1
            else:
                cont = True
        if step_vcpu is not None:
            return self._step(step_vcpu)
        if cont:
            return self._resume()
        return E_BADARG

    def _kill(self) -> None:
        m = self.machine
        if not m.exit_requested:
            m.request_exit(EXIT_KILLED, "killed from gdb")
            self.killed = True
        self._finish()
        if self.sess is not None:
            self.sess.closed = True
        self._say("gdb killed the run")
        return None


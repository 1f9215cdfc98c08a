// The page's side of clock sync (taggers/clock.py): the service owns the estimate, the
// page only tells its own clock, answering each clock_probe, and stamps key presses on
// that same clock. Separate from the connection so the times a tag carries are worked out
// in one place, with no DOM and no socket.
//
// Times are Unix microseconds from performance.timeOrigin + a monotonic offset (an event's
// timeStamp, performance.now()): a wall clock set wrong mid-session does not move them.
// ?clock_skew_ms=N (tests) shifts the clock the page reports, not the true press times
// the tests compare with.

import { newTagId } from "./protocol.js";

// ?clock_skew_ms as µs (0 when absent or not a number), from a query string.
export function skewUsFromQuery(search) {
  try {
    const raw = new URLSearchParams(search).get("clock_skew_ms");
    const value = raw === null ? 0 : Number(raw);
    return Number.isFinite(value) ? Math.round(value * 1000) : 0;
  } catch (error) {
    return 0;
  }
}

export class PageClock {
  constructor(options) {
    const opts = options || {};
    this.skewUs = opts.skewUs || 0;
    this.timeOriginMs = opts.timeOriginMs ?? performance.timeOrigin;
    this.nowMs = opts.nowMs || (() => performance.now());
    // Names this clock (this page load's timeOrigin) for the service across reconnects.
    this.id = newTagId();
  }

  // The page's clock as it reports it, µs.
  nowUs() {
    return Math.round((this.timeOriginMs + this.nowMs()) * 1000) + this.skewUs;
  }

  // A key press at a DOM event's timeStamp (ms since timeOrigin; now if missing):
  // trueUs (Unix µs, no skew), clientUs (as the page reports it), unixMs.
  press(timeStamp) {
    const ts = typeof timeStamp === "number" && timeStamp > 0 ? timeStamp : this.nowMs();
    const trueUs = Math.round((this.timeOriginMs + ts) * 1000);
    return { trueUs, clientUs: trueUs + this.skewUs, unixMs: this.timeOriginMs + ts };
  }

  // ClockReply: the probe echoed with this clock when it was handled.
  reply(probe) {
    return {
      type: "clock_reply",
      probe_id: probe.probe_id,
      server_send_us: probe.server_send_us,
      client_time_us: this.nowUs(),
    };
  }
}

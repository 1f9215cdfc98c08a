// The widget's websocket to the tag service (/ws/tag): one socket at a time, the hello
// sent first on each, opened again after a loss with a doubling backoff, slowly after a
// refusal, never after a final close. Apart from the widget so the reconnect policy reads
// on its own; what the messages mean is the widget's (tagger.js).

import * as protocol from "./protocol.js";

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 5000;
// Refused (close codes 4400-4599 carry the reason, streams.runtime.connection_gate): try
// again after 10-20 s, not at the usual pace.
const REFUSED_RETRY_MS = 10000;

export class TagConnection {
  // hello(): the first message for a new socket (maybe a Promise), null when the page has
  // no credential yet. onMessage(message): each server message. onStatus(text): a reason
  // for people. onReset(): a socket was opened or lost, the service's welcome and clock
  // sync start over. onChange(): the hello went out.
  constructor({ url, hello, onMessage, onStatus, onReset, onChange }) {
    this.url = url;
    this.hello = hello;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onReset = onReset;
    this.onChange = onChange;
    this.ws = null;
    this.connects = 0;
    this.stopped = false; // the link was revoked or ran out: no more reconnects
    this.retryMs = BACKOFF_START_MS;
    this.reconnectTimer = null;
  }

  connect() {
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this.onStatus(`cannot open ${this.url}: ${error.message}`);
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.connects += 1;
    this.onReset();
    ws.addEventListener("open", async () => {
      if (ws !== this.ws) return;
      const hello = await this.hello();
      if (ws !== this.ws) return;
      if (!hello) {
        this.onStatus("no credential for this page yet: retrying");
        ws.close();
        return;
      }
      ws.send(JSON.stringify(hello));
      this.onChange();
    });
    ws.addEventListener("message", (event) => {
      if (ws !== this.ws) return;
      const message = protocol.parseServerMessage(event.data);
      if (message === null) return;
      try {
        this.onMessage(message);
      } catch (error) {
        console.error("livetag tagger:", error);
      }
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      const kind = protocol.closeKind(event.code);
      if (kind === "final") {
        // The director revoked this link, the session is over, or the link ran out:
        // reconnecting cannot help.
        this.stopped = true;
        this.onStatus(protocol.finalCloseMessage(event.reason));
      } else {
        if (kind === "refused") {
          this.onStatus(event.reason || `refused (${event.code})`);
          this.retryMs = Math.max(this.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
        }
        this._scheduleReconnect();
      }
      this.onReset();
    });
  }

  // The service welcomed this socket: the next loss starts the backoff over.
  welcomed() {
    this.retryMs = BACKOFF_START_MS;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  // Drop the socket as a network loss would (tests): it is opened again.
  drop() {
    if (this.ws) this.ws.close();
  }

  _scheduleReconnect() {
    if (this.reconnectTimer || this.stopped) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, BACKOFF_MAX_MS);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }
}

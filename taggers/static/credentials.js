// livetag page credentials: a join link's token is swapped for a short-lived session
// credential on load, and taken out of the address bar and the tab's history.
//
// An ES module (no build step) exporting LivetagCredentials (and Backoff, the reconnect
// wait the pages share with its closed() verdict). The call page and the
// dashboard each make one for the link they were opened with; the call page module,
// loaded into the dashboard, uses the dashboard's (window.LIVETAG_CREDENTIALS). The
// dashboard server serves this same file as /dashboard/credentials.js. Server side:
// taggers/credentials.py.
//
//  - The link's token leaves the address at once (history.replaceState) and is kept in
//    this tab's sessionStorage, nowhere else: a reload of the tab still joins (the
//    address no longer has it), another tab, a browser restart or another site does not
//    see it, and it is only ever sent in the body of the exchange (POST /api/credential),
//    never in a URL: the browser prints failed requests' URLs in its console.
//  - The credential is kept in memory only. The server renews it over the open websocket
//    ({type: "credential"}); the page exchanges the link again only when it has no valid
//    credential left (a reload, an outage longer than the credential's life).
//  - Websockets carry it in their handshake as a subprotocol, not in the URL.
//  - Nothing here writes a token to the console.
const PROTOCOL = "livetag";
const CREDENTIAL_PROTOCOL = "livetag.credential.";
// A credential this close to its end is not used for a new connection: the server
// could see it expired by the time the handshake arrives.
const FRESH_MARGIN_MS = 5000;
// A refused connection (a close code 4400-4599 with the reason, streams.runtime.
// connection_gate; or the probe's 429/503: the server, the session or this address is
// full) tries again after 10-20 s, not at the usual pace: hundreds of refused pages must
// not hammer the server.
const REFUSED_RETRY_MS = 10000;

// A page's wait before it opens its websocket again: doubling from startMs up to maxMs,
// 10-20 s after a refusal; reset() once the page is really back.
export class Backoff {
  constructor(options) {
    const opts = options || {};
    this.startMs = opts.startMs || 500;
    this.maxMs = opts.maxMs || 2000;
    this.ms = this.startMs;
  }

  // The wait before the next try (slow: the last one was refused).
  next(slow) {
    if (slow) this.ms = Math.max(this.ms, REFUSED_RETRY_MS * (1 + Math.random()));
    const wait = this.ms;
    this.ms = Math.min(this.ms * 2, this.maxMs);
    return wait;
  }

  reset() {
    this.ms = this.startMs;
  }
}

export class LivetagCredentials {
  // Close codes of a connection whose link was revoked / ran out (taggers/credentials.py).
  static CLOSE_REVOKED = 4403;
  static CLOSE_LINK_EXPIRED = 4410;

  // Revoked (4403), the session over (4409), the link ran out (4410): rejoining cannot help.
  static isFinalClose(code) {
    return code === 4403 || code === 4409 || code === 4410;
  }

  // "revoked: your links ..." -> the message part, for people.
  static closeMessage(reason) {
    return String(reason || "").replace(/^[a-z_]+: /, "") || "access ended";
  }

  constructor(options) {
    const opts = options || {};
    if (!opts.exchangeUrl) throw new Error("LivetagCredentials: exchangeUrl is required");
    this.exchangeUrl = opts.exchangeUrl;
    this.storageKey = opts.storageKey || "livetag-link";
    this.link = LivetagCredentials.takeLink(this.storageKey);
    this.token = null;
    this.expiresAtMs = 0; // on performance.now(): a wrong wall clock does not matter
    this.claims = null; // the exchange's answer: session, role, participant, token id
    // Test hooks.
    this.exchanges = 0;
    this.renewals = 0;
  }

  // The link's token: from the address (then taken out of it), else from this tab's
  // sessionStorage (the page was reloaded after taking it out).
  static takeLink(storageKey) {
    let fromAddress = null;
    try {
      const url = new URL(window.location.href);
      fromAddress = url.searchParams.get("token");
      if (fromAddress !== null) {
        url.searchParams.delete("token");
        window.history.replaceState(window.history.state, "", `${url.pathname}${url.search}${url.hash}`);
      }
    } catch (error) {
      fromAddress = null;
    }
    try {
      if (fromAddress) {
        window.sessionStorage.setItem(storageKey, fromAddress);
        return fromAddress;
      }
      return window.sessionStorage.getItem(storageKey);
    } catch (error) {
      return fromAddress; // storage disabled: memory only (a reload needs the link again)
    }
  }

  current() {
    return this.token;
  }

  fresh() {
    return this.token !== null && performance.now() < this.expiresAtMs - FRESH_MARGIN_MS;
  }

  // Take a credential (the exchange's answer or a {type: "credential"} renewal). Two
  // websockets renew the same page's credential: the one that lasts longer is kept.
  accept(message) {
    if (!message || typeof message.credential !== "string") return false;
    const seconds = Number(message.expires_in_s);
    const expires = performance.now() + (Number.isFinite(seconds) ? seconds : 0) * 1000;
    if (this.token !== null && expires < this.expiresAtMs) return false;
    this.token = message.credential;
    this.expiresAtMs = expires;
    if (message.type === "credential") this.renewals += 1;
    return true;
  }

  // A usable credential: {ok: true}, or {ok: false, final, message} (final: the link
  // itself is refused, retrying will not help).
  async ensure() {
    if (this.fresh()) return { ok: true };
    if (!this.link) {
      return { ok: false, final: true, message: "no token in the link: open the link you were given" };
    }
    const answer = await this._post(this.exchangeUrl, this.link);
    if (answer.ok && answer.body && typeof answer.body.credential === "string") {
      this.exchanges += 1;
      this.claims = answer.body;
      this.accept(answer.body);
      return { ok: true };
    }
    return answer.refusal;
  }

  // Why a websocket with the current credential was refused, asked at probeUrl (a
  // refused handshake tells a page nothing): {ok: true} if it is not refused (the
  // server was away), else {ok: false, final, status, code, message}.
  async why(probeUrl) {
    if (!this.token) return { ok: false, final: false, message: "no credential yet" };
    const answer = await this._post(probeUrl, this.token);
    if (answer.ok) return { ok: true };
    if (answer.status === 401) {
      // Expired (an outage outlived it) or unusable: the link may still give a new one.
      this.token = null;
      this.expiresAtMs = 0;
      return { ...answer.refusal, final: false };
    }
    return answer.refusal;
  }

  // What to do after a page's websocket closed (event: its close event): {retry: false,
  // code, message} when rejoining cannot help (revoked, ran out, the session over, the
  // link refused), else {retry: true, slow, message} (slow: refused for now, see Backoff).
  // A refused handshake tells a page nothing: probeUrl is asked why (the server away is
  // a plain retry).
  async closed(event, probeUrl) {
    if (LivetagCredentials.isFinalClose(event.code)) {
      const reason = String(event.reason || "");
      return { retry: false, code: reason.split(":")[0] || null, message: LivetagCredentials.closeMessage(reason) };
    }
    const why = await this.why(probeUrl);
    if (!why.ok && why.final) return { retry: false, code: why.code, message: why.message };
    if (why.status === 429 || why.status === 503) return { retry: true, slow: true, message: why.message };
    if (event.code >= 4400 && event.code < 4600) {
      return { retry: true, slow: true, message: event.reason || `refused (${event.code})` };
    }
    return { retry: true, slow: false, message: event.reason || "connection lost" };
  }

  async _post(url, token) {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        // text/plain keeps it a "simple" request: the dashboard's page may ask the
        // capture server (another origin) without a preflight.
        headers: { "Content-Type": "text/plain" },
        body: JSON.stringify({ token }),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      const refusal = { ok: false, final: false, status: 0, code: "unreachable", message: "server unreachable" };
      return { ok: false, status: 0, body: null, refusal };
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    const status = response.status;
    const message = (body && typeof body.message === "string" && body.message) || `refused (${status})`;
    // A 4xx refuses the link itself (expired, revoked, unknown session...), except
    // "too many" and a timeout, which pass.
    const final = status >= 400 && status < 500 && status !== 408 && status !== 429;
    const code = body && typeof body.code === "string" ? body.code : null;
    return { ok: response.ok, status, body, refusal: { ok: false, final, status, code, message } };
  }

  // The subprotocols of a websocket that carries the credential in its handshake: a
  // browser prints a failed websocket's URL in its console, never its headers.
  protocols() {
    return [PROTOCOL, `${CREDENTIAL_PROTOCOL}${this.token}`];
  }
}

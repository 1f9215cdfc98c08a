// livetag page credentials: a join link's token is swapped for a short-lived session
// credential on load, and taken out of the address bar and the tab's history.
//
// An ES module (no build step) exporting LivetagCredentials. The call page and the
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

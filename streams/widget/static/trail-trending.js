/*
 * <trail-trending>: the live "trending now" list of a TRAIL widget server.
 *
 * Drop it into any page:
 *   <script src="http://HOST:PORT/embed.js"></script>
 *   <trail-trending src="http://HOST:PORT" limit="10"></trail-trending>
 *
 * `src` defaults to the server this script was loaded from; `limit` (1..100, default 10) is the
 * number of rows shown. The element listens to the server's Server-Sent Events and updates its
 * rows in place, keyed by item id (rank badge, score, explanation, sparkline). Every value that
 * comes from the server (titles, explanations, ids) is written with textContent or
 * setAttribute only: never parsed as HTML. No dependencies, no build step. Below 540 px of
 * width (a phone, a sidebar) rows stack: rank over badge at the left, the text full width.
 *
 * Events: `trail-update` (detail: {windowEnd, items}) after each render, `trail-status`
 * (detail: {status: "live" | "connecting" | "reconnecting"}).
 */
(() => {
  "use strict";
  if (customElements.get("trail-trending")) return;

  const SCRIPT = document.currentScript;
  const DEFAULT_BASE = SCRIPT && SCRIPT.src ? new URL(".", SCRIPT.src).href : location.href;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TRENDS = new Set(["rising", "falling", "steady", "new"]);
  const CHANGES = new Set(["up", "down", "same", "new"]);
  const SPARK_W = 96;
  const SPARK_H = 28;

  const CSS = `
    :host { display: block; box-sizing: border-box; max-width: 760px;
      font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
      color: #1c2330; background: #fff; border: 1px solid #dfe3ea; border-radius: 12px;
      padding: 14px 16px; }
    :host([hidden]) { display: none; }
    header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 2px 10px;
      margin-bottom: 8px; }
    h2 { font-size: 16px; margin: 0; font-weight: 650; }
    .window { color: #5b6577; font-size: 12px; flex: 1 1 auto; }
    .status { font-size: 12px; color: #5b6577; display: inline-flex; align-items: center; gap: 5px; }
    .status::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: #c2c8d2; }
    .status[data-status="live"]::before { background: #1f9d55; }
    .status[data-status="reconnecting"]::before { background: #d97706; }
    ol { list-style: none; margin: 0; padding: 0; }
    li { display: grid; grid-template-columns: 86px minmax(0, 1fr) auto 64px;
      align-items: center; gap: 10px; padding: 8px 4px; border-top: 1px solid #eef0f4; }
    .pos { display: grid; grid-template-columns: 28px 48px; align-items: center; gap: 10px; }
    li:first-child { border-top: none; }
    .rank { font-weight: 700; font-size: 18px; text-align: right; color: #2a3345;
      font-variant-numeric: tabular-nums; }
    .badge { font-size: 12px; font-weight: 650; text-align: center; border-radius: 6px;
      padding: 2px 4px; color: #6b7280; background: #f1f3f6; font-variant-numeric: tabular-nums; }
    .badge[data-change="up"] { color: #0f7a3d; background: #e3f6ea; }
    .badge[data-change="down"] { color: #b42318; background: #fdeceb; }
    .badge[data-change="new"] { color: #1d4ed8; background: #e6eefe; }
    .main { min-width: 0; }
    .head { display: flex; align-items: baseline; gap: 8px; min-width: 0; }
    .title { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
      flex: 0 1 auto; min-width: 0; }
    /* Ids can be long strings (titles, URLs): they give way to the title, never take it. */
    .id { color: #8a93a3; font-size: 11px; white-space: nowrap; overflow: hidden;
      text-overflow: ellipsis; flex: none; max-width: 25%; }
    .id[hidden], .trend[hidden] { display: none; }
    .trend { font-size: 11px; border-radius: 999px; padding: 0 7px; background: #f1f3f6;
      color: #5b6577; white-space: nowrap; flex: none; }
    .trend.rising { background: #e3f6ea; color: #0f7a3d; }
    .trend.falling { background: #fdeceb; color: #b42318; }
    .trend.new { background: #e6eefe; color: #1d4ed8; }
    /* break-word, not anywhere: "anywhere" lets a squeezed column shrink to one letter. */
    .explanation { margin: 2px 0 0; color: #465063; font-size: 12.5px;
      overflow-wrap: break-word; word-break: normal; white-space: pre-wrap; min-width: 0; }
    .explanation:empty { display: none; }
    svg { display: block; overflow: visible; }
    polyline { fill: none; stroke: #3b82f6; stroke-width: 1.6; stroke-linejoin: round;
      stroke-linecap: round; }
    polygon { fill: #3b82f6; opacity: 0.12; stroke: none; }
    circle { fill: #1d4ed8; }
    .score { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
    .score small { display: block; font-weight: 400; color: #8a93a3; font-size: 10.5px; }
    .empty { color: #5b6577; margin: 8px 0; }
    .empty[hidden] { display: none; }

    /* Narrow (a phone, a sidebar): rank over badge at the left; title, explanation and
       sparkline get the whole width beside them, the score stays top right. */
    ol[data-layout="narrow"] li { grid-template-columns: 40px minmax(0, 1fr) auto;
      grid-template-areas: "pos head score" "pos text text" "pos spark spark";
      align-items: start; column-gap: 10px; row-gap: 3px; }
    ol[data-layout="narrow"] .pos { grid-area: pos; grid-template-columns: 40px; gap: 4px;
      justify-items: center; }
    ol[data-layout="narrow"] .rank { text-align: center; line-height: 1.2; }
    ol[data-layout="narrow"] .main { display: contents; }
    ol[data-layout="narrow"] .head { grid-area: head; flex-wrap: wrap; row-gap: 2px; }
    ol[data-layout="narrow"] .title { flex: 1 1 100%; white-space: normal;
      overflow-wrap: break-word; display: -webkit-box; -webkit-box-orient: vertical;
      -webkit-line-clamp: 2; line-clamp: 2; }
    ol[data-layout="narrow"] .id { max-width: 60%; }
    ol[data-layout="narrow"] .explanation { grid-area: text; margin: 0; }
    ol[data-layout="narrow"] .spark { grid-area: spark; }
    ol[data-layout="narrow"] .score { grid-area: score; }
  `;
  // Below this content width (px) rows switch to the narrow layout: the wide grid needs
  // about 290 px of fixed columns and leaves the title and explanation too little.
  const NARROW_BELOW = 540;

  let sharedSheet = null;
  function adoptStyles(root) {
    if ("adoptedStyleSheets" in Document.prototype && "replaceSync" in CSSStyleSheet.prototype) {
      if (!sharedSheet) {
        sharedSheet = new CSSStyleSheet();
        sharedSheet.replaceSync(CSS);
      }
      root.adoptedStyleSheets = [sharedSheet];
    } else {
      const style = document.createElement("style");
      style.textContent = CSS;
      root.append(style);
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  function finite(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function isoDate(unixSeconds) {
    if (!finite(unixSeconds)) return "";
    try {
      return new Date(unixSeconds * 1000).toISOString().slice(0, 10);
    } catch (_) {
      return "";
    }
  }

  function sparkPoints(item) {
    // Per-window counts (oldest first) at their window positions; fall back to recent_counts.
    const history = Array.isArray(item.history) ? item.history : [];
    let points = history
      .filter((h) => h && finite(h.window_end) && finite(h.count))
      .map((h) => [h.window_end, h.count]);
    if (points.length < 2 && Array.isArray(item.recent_counts)) {
      points = item.recent_counts.filter(finite).map((c, i) => [i, c]);
    }
    return points;
  }

  class TrailTrending extends HTMLElement {
    static get observedAttributes() {
      return ["src", "limit"];
    }

    constructor() {
      super();
      this._root = this.attachShadow({ mode: "open" });
      adoptStyles(this._root);
      const header = el("header");
      header.append(el("h2", "", "Trending now"));
      this._window = el("span", "window");
      this._status = el("span", "status", "connecting");
      this._status.setAttribute("data-status", "connecting");
      header.append(this._window, this._status);
      this._empty = el("p", "empty", "Waiting for the first window…");
      this._list = el("ol", "list");
      this._list.setAttribute("part", "list");
      this._root.append(header, this._empty, this._list);
      this._rows = new Map();
      this._source = null;
      this._resize = null;
      this.snapshot = null;
    }

    connectedCallback() {
      this._fit();
      // A ResizeObserver, not a container query: size containment on the host would make it
      // collapse to zero width in shrink-to-fit places (a flex item, a float) of a host page.
      if (typeof ResizeObserver === "function") {
        this._resize = new ResizeObserver(() => this._fit());
        this._resize.observe(this);
      } else {
        const onResize = () => this._fit();
        addEventListener("resize", onResize);
        this._resize = { disconnect: () => removeEventListener("resize", onResize) };
      }
      this._connect();
    }

    disconnectedCallback() {
      if (this._resize) {
        this._resize.disconnect();
        this._resize = null;
      }
      this._disconnect();
    }

    _fit() {
      const style = getComputedStyle(this);
      const width = this.clientWidth
        - parseFloat(style.paddingLeft || "0") - parseFloat(style.paddingRight || "0");
      if (!(width > 0)) return; // not rendered (hidden, detached): keep the last layout
      const current = this._list.getAttribute("data-layout");
      // A little hysteresis: a page scrollbar that comes and goes with the new row heights
      // must not flip the layout back and forth.
      const limit = current === "narrow" ? NARROW_BELOW + 16 : NARROW_BELOW;
      const layout = width < limit ? "narrow" : "wide";
      if (current !== layout) {
        this._list.setAttribute("data-layout", layout);
      }
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (oldValue === newValue || !this.isConnected) return;
      if (name === "src") this._connect();
      else if (this.snapshot) this._render(this.snapshot);
    }

    get base() {
      const src = this.getAttribute("src");
      let url;
      try {
        url = new URL(src || DEFAULT_BASE, location.href);
      } catch (_) {
        return null;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") return null;
      if (!url.pathname.endsWith("/")) url.pathname += "/";
      url.search = "";
      url.hash = "";
      return url;
    }

    get limit() {
      const value = parseInt(this.getAttribute("limit") || "10", 10);
      return Number.isFinite(value) ? Math.min(100, Math.max(1, value)) : 10;
    }

    _setStatus(status) {
      this._status.setAttribute("data-status", status);
      this._status.textContent = status;
      this.dispatchEvent(new CustomEvent("trail-status", { detail: { status } }));
    }

    _connect() {
      this._disconnect();
      const base = this.base;
      if (!base) {
        this._setStatus("invalid src");
        return;
      }
      const source = new EventSource(new URL("events", base).href);
      this._source = source;
      this._setStatus("connecting");
      source.addEventListener("open", () => this._setStatus("live"));
      source.addEventListener("error", () => {
        if (source.readyState !== EventSource.OPEN) this._setStatus("reconnecting");
      });
      source.addEventListener("trending", (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        if (data && Array.isArray(data.items)) this._render(data);
      });
    }

    _disconnect() {
      if (this._source) {
        this._source.close();
        this._source = null;
      }
    }

    _createRow(itemId) {
      const row = el("li");
      row.setAttribute("data-item-id", itemId);
      row.setAttribute("part", "row");
      const parts = {
        row,
        rank: el("span", "rank"),
        badge: el("span", "badge"),
        title: el("span", "title"),
        id: el("span", "id"),
        trend: el("span", "trend"),
        explanation: el("p", "explanation"),
        spark: svg("svg", {
          class: "spark",
          width: SPARK_W,
          height: SPARK_H,
          viewBox: `0 0 ${SPARK_W} ${SPARK_H}`,
          role: "img",
        }),
        area: svg("polygon"),
        line: svg("polyline"),
        dot: svg("circle", { r: "2.4" }),
        tooltip: svg("title"),
        score: el("span", "score"),
        scoreValue: document.createTextNode(""),
        scoreLabel: el("small", "", "score"),
      };
      parts.spark.append(parts.tooltip, parts.area, parts.line, parts.dot);
      const head = el("div", "head");
      head.append(parts.title, parts.trend, parts.id);
      const main = el("div", "main");
      main.append(head, parts.explanation);
      const pos = el("div", "pos");
      pos.append(parts.rank, parts.badge);
      parts.score.append(parts.scoreValue, parts.scoreLabel);
      row.append(pos, main, parts.spark, parts.score);
      return parts;
    }

    _updateRow(parts, item) {
      const itemId = String(item.item_id);
      const rank = finite(item.rank) ? item.rank : "";
      parts.row.setAttribute("data-rank", String(rank));
      parts.rank.textContent = String(rank);

      // An item the scorer calls new reads "new" only, never "▲1", even if it was listed a
      // window before (the server says so too; this covers any other source of snapshots).
      const change = item.trend === "new" ? "new" : CHANGES.has(item.change) ? item.change : "none";
      parts.row.setAttribute("data-change", change);
      parts.badge.setAttribute("data-change", change);
      let badge = "–";
      let label = "no change";
      if (change === "up" || change === "down") {
        const delta = finite(item.previous_rank) && finite(item.rank)
          ? Math.abs(item.previous_rank - item.rank) : "";
        badge = `${change === "up" ? "▲" : "▼"}${delta}`;
        label = `${change === "up" ? "up" : "down"} ${delta} from rank ${item.previous_rank}`;
      } else if (change === "new") {
        badge = "new";
        label = "new in the list";
      }
      parts.badge.textContent = badge;
      parts.badge.setAttribute("title", label);

      const title = typeof item.title === "string" && item.title ? item.title : `item ${itemId}`;
      parts.title.textContent = title;
      parts.title.setAttribute("title", title);
      parts.id.textContent = `#${itemId}`;
      parts.id.hidden = title === itemId; // ids that are titles: say it once
      // The badge already says "new": a second "new" pill beside it says nothing more.
      const trend = TRENDS.has(item.trend) && item.trend !== "new" ? item.trend : "";
      parts.trend.className = trend ? `trend ${trend}` : "trend";
      parts.trend.textContent = trend;
      parts.trend.hidden = !trend;
      parts.explanation.textContent = typeof item.explanation === "string" ? item.explanation : "";
      parts.scoreValue.textContent = finite(item.score) ? item.score.toFixed(3) : "–";
      this._drawSpark(parts, item);
    }

    _drawSpark(parts, item) {
      const points = sparkPoints(item);
      if (points.length === 0) {
        parts.line.setAttribute("points", "");
        parts.area.setAttribute("points", "");
        parts.dot.setAttribute("visibility", "hidden");
        parts.tooltip.textContent = "no history";
        return;
      }
      const xs = points.map((p) => p[0]);
      const ys = points.map((p) => p[1]);
      const x0 = Math.min(...xs);
      const x1 = Math.max(...xs);
      const yMax = Math.max(...ys, 1e-9);
      const pad = 3;
      const coords = points.map(([x, y]) => {
        const px = x1 > x0 ? pad + ((x - x0) / (x1 - x0)) * (SPARK_W - 2 * pad) : SPARK_W - pad;
        const py = SPARK_H - pad - (Math.max(0, y) / yMax) * (SPARK_H - 2 * pad);
        return [px.toFixed(1), py.toFixed(1)];
      });
      const line = coords.map((c) => c.join(",")).join(" ");
      parts.line.setAttribute("points", line);
      const first = coords[0];
      const last = coords[coords.length - 1];
      parts.area.setAttribute(
        "points", `${first[0]},${SPARK_H - pad} ${line} ${last[0]},${SPARK_H - pad}`);
      parts.dot.setAttribute("cx", last[0]);
      parts.dot.setAttribute("cy", last[1]);
      parts.dot.setAttribute("visibility", "visible");
      parts.tooltip.textContent = `events per window: ${ys.map((y) => +y.toFixed(2)).join(", ")}`;
      parts.spark.setAttribute("aria-label", parts.tooltip.textContent);
    }

    _render(snapshot) {
      this.snapshot = snapshot;
      const items = snapshot.items.filter((item) => item && item.item_id !== undefined)
        .slice(0, this.limit);
      // FLIP: remember where rows were, reorder in place, then animate from old to new spot.
      const before = new Map();
      for (const [id, parts] of this._rows) before.set(id, parts.row.getBoundingClientRect().top);
      const keep = new Set();
      for (const item of items) {
        const id = String(item.item_id);
        if (keep.has(id)) continue;
        keep.add(id);
        let parts = this._rows.get(id);
        if (!parts) {
          parts = this._createRow(id);
          this._rows.set(id, parts);
        }
        this._updateRow(parts, item);
        this._list.append(parts.row); // moves an existing row: no re-creation, no reload
      }
      for (const [id, parts] of this._rows) {
        if (!keep.has(id)) {
          parts.row.remove();
          this._rows.delete(id);
        }
      }
      const animate = typeof Element.prototype.animate === "function"
        && !matchMedia("(prefers-reduced-motion: reduce)").matches;
      if (animate) {
        for (const [id, parts] of this._rows) {
          const top = parts.row.getBoundingClientRect().top;
          if (before.has(id)) {
            const dy = before.get(id) - top;
            if (Math.abs(dy) > 1) {
              parts.row.animate(
                [{ transform: `translateY(${dy}px)` }, { transform: "translateY(0)" }],
                { duration: 450, easing: "cubic-bezier(.2,.8,.2,1)" });
            }
          } else {
            parts.row.animate([{ opacity: 0 }, { opacity: 1 }], { duration: 350 });
          }
        }
      }
      this._empty.hidden = this._rows.size > 0;
      const start = isoDate(snapshot.window_start);
      const end = isoDate(snapshot.window_end);
      this._window.textContent = start && end ? `window ${start} → ${end}` : "";
      this.setAttribute("data-window-end", String(snapshot.window_end));
      this.dispatchEvent(new CustomEvent("trail-update", {
        detail: { windowEnd: snapshot.window_end, items: [...keep] },
      }));
    }
  }

  customElements.define("trail-trending", TrailTrending);
})();

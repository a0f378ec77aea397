// The gallery of a guided-backprop run. Every string from the user's files is shown with
// textContent or set as an attribute through the DOM: nothing here parses HTML.
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("report-data").textContent);
  const columns = data.columns;
  const rows = data.rows;
  // Top-k runs: a class x method grid per input (one grid row per explained class, one column per method).
  const ranks = Math.max(1, data.ranks | 0);
  const inputCol = columns.findIndex((c) => c.rank === null);
  const methods = [];
  for (const c of columns) if (c.rank !== null && !methods.includes(c.method || c.key)) methods.push(c.method || c.key);
  const cellIndex = new Map(columns.map((c, i) => [(c.rank === null ? "input" : (c.method || c.key) + "@" + c.rank), i]));
  const pageSize = Math.max(1, data.pageSize | 0);
  const $ = (id) => document.getElementById(id);

  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  // Names from the files arrive with their control characters spelled out (\u202e); each is still isolated
  // from the text around it (<bdi>, or FSI ... PDI inside a longer string), so a right-to-left name
  // cannot reorder what follows it.
  const iso = (t) => "\u2068" + String(t) + "\u2069";
  const percent = (p) => (typeof p === "number" ? (100 * p).toFixed(1) + "%" : "?");
  const classKey = (r) => (r.ok ? (r.label !== null && r.label !== undefined ? r.label : "#" + r.cls) : null);

  for (const r of rows) r.search = String(r.name || r.path || "").toLowerCase();

  // ---------------------------------------------------------------- state (kept in the URL's #hash)
  const state = { cls: "", q: "", status: "all", sort: "order", page: 0 };
  const SORTS = ["order", "conf-desc", "conf-asc", "name"];
  const STATUSES = ["all", "ok", "failed"];

  function readHash() {
    try {
      const h = new URLSearchParams(location.hash.replace(/^#/, ""));
      if (h.has("class")) state.cls = h.get("class");
      if (h.has("q")) state.q = h.get("q");
      if (STATUSES.includes(h.get("status"))) state.status = h.get("status");
      if (SORTS.includes(h.get("sort"))) state.sort = h.get("sort");
      const page = parseInt(h.get("page") || "1", 10);
      if (page > 0) state.page = page - 1;
    } catch (err) { /* a hand-edited hash: keep the defaults */ }
  }

  function writeHash() {
    const h = new URLSearchParams();
    if (state.cls) h.set("class", state.cls);
    if (state.q) h.set("q", state.q);
    if (state.status !== "all") h.set("status", state.status);
    if (state.sort !== "order") h.set("sort", state.sort);
    if (state.page) h.set("page", String(state.page + 1));
    const text = h.toString();
    try { history.replaceState(null, "", text ? "#" + text : location.pathname + location.search); }
    catch (err) { /* some file:// settings forbid it; the page works without */ }
  }

  // ---------------------------------------------------------------- controls
  const classSelect = $("filter-class");
  const nameInput = $("filter-name");
  const statusSelect = $("filter-status");
  const sortSelect = $("sort");

  function fillClasses() {
    const counts = new Map();
    for (const r of rows) {
      const key = classKey(r);
      if (key !== null) counts.set(key, (counts.get(key) || 0) + 1);
    }
    const keys = Array.from(counts.keys()).sort((a, b) => counts.get(b) - counts.get(a) || a.localeCompare(b));
    for (const key of keys) {
      const option = el("option", null, key + " (" + counts.get(key) + ")");
      option.value = key;
      classSelect.appendChild(option);
    }
    if (state.cls && !counts.has(state.cls)) state.cls = "";
  }

  function syncControls() {
    classSelect.value = state.cls;
    nameInput.value = state.q;
    statusSelect.value = state.status;
    sortSelect.value = state.sort;
  }

  let matching = [];
  function recompute() {
    const q = state.q.trim().toLowerCase();
    matching = rows.filter((r) => {
      if (state.status === "ok" && !r.ok) return false;
      if (state.status === "failed" && r.ok) return false;
      if (state.cls && classKey(r) !== state.cls) return false;
      return !q || r.search.includes(q);
    });
    const byIdx = (a, b) => (a.idx ?? 0) - (b.idx ?? 0);
    const conf = (r) => (r.ok && typeof r.prob === "number" ? r.prob : null);
    if (state.sort === "conf-desc" || state.sort === "conf-asc") {
      const sign = state.sort === "conf-desc" ? -1 : 1;
      matching.sort((a, b) => {
        const pa = conf(a), pb = conf(b);
        if (pa === null || pb === null) return (pa === null) - (pb === null) || byIdx(a, b);
        return sign * (pa - pb) || byIdx(a, b);
      });
    } else if (state.sort === "name") {
      matching.sort((a, b) => a.search.localeCompare(b.search) || byIdx(a, b));
    }
  }

  // ---------------------------------------------------------------- rows
  const rowsBox = $("rows");
  let gallery = []; // the pictures of the shown page, in order, for the lightbox

  function headRow() {
    const head = $("head-row");
    head.appendChild(el("span", null, "Input and top-5 classes"));
    if (ranks > 1) {
      document.documentElement.style.setProperty("--nmethods", String(Math.max(1, methods.length)));
      head.classList.add("ranked");
      head.append(el("span", null, "Input (as the network saw it)"), el("span", null, "Explained class"));
      for (const m of methods) head.appendChild(el("span", null, columns[cellIndex.get(m + "@1") ?? cellIndex.get(m + "@2")]?.label ?? m));
      return;
    }
    document.documentElement.style.setProperty("--ncols", String(Math.max(1, columns.length)));
    for (const c of columns) head.appendChild(el("span", null, c.label));
  }

  function top5List(r) {
    const list = el("ol", "top5");
    const entries = r.top5 && r.top5.length ? r.top5 : [[r.cls, r.label, r.prob]];
    for (const [cls, label, p] of entries) {
      const item = el("li");
      const bar = el("span", "bar");
      bar.style.width = typeof p === "number" ? Math.max(0, Math.min(100, 100 * p)).toFixed(1) + "%" : "0";
      const name = el("bdi", "label", label !== null && label !== undefined ? label : "#" + cls);
      name.title = (label ?? "") + (cls !== null && cls !== undefined ? "  (class " + cls + ")" : "");
      item.append(bar, name, el("span", "p", percent(p)));
      list.appendChild(item);
    }
    return list;
  }

  // Caption words for one picture: the input shows the prediction; a map shows what it explains.
  function whatItShows(r, c) {
    if (c.rank && r.targets && r.targets[c.rank - 1] != null) return "explains " + iso(r.targets[c.rank - 1]);
    if (c.rank && r.explains) return "explains " + iso(r.explains);
    const predicted = r.label !== null && r.label !== undefined ? iso(r.label) : "class " + r.cls;
    return (c.rank ? "explains " : "predicted ") + predicted + " " + percent(r.prob);
  }

  function rowElement(r) {
    const row = el("article", r.ok ? "row" : "row failed-row");
    row.dataset.idx = String(r.idx);
    const meta = el("div", "meta");
    const title = el("div");
    title.append(el("span", "idx", "#" + r.idx), el("bdi", "name", r.name));
    title.title = r.path || "";
    meta.appendChild(title);
    if (!r.ok) {
      const error = el("div", "error", r.error);
      error.dir = "auto";
      meta.appendChild(error);
      row.appendChild(meta);
      return row;
    }
    if ((r.top5 && r.top5.length) || (r.cls !== null && r.cls !== undefined)) meta.appendChild(top5List(r));
    if (r.explains && ranks === 1) meta.appendChild(el("div", "explains", "explains: " + iso(r.explains)));
    if (r.panel) {
      const link = el("a", "panel-link", "panel: every map in one picture");
      link.href = r.panel;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      meta.appendChild(link);
    }
    row.appendChild(meta);
    if (ranks > 1) return rankedCells(row, meta, r);
    columns.forEach((c, i) => row.appendChild(cellElement(r, c, r.img[i])));
    return row;
  }

  // One picture of a row: a thumbnail that opens the full picture in the lightbox.
  function cellElement(r, c, pic) {
    if (!pic) return el("div", "cell missing", "no " + c.label.toLowerCase());
    const cell = el("div", "cell");
    const button = el("button");
    button.type = "button";
    const zero = c.rank && r.zero && (r.zero[c.rank - 1] || []).includes(c.method);
    const caption = c.label + " · " + iso(r.name) + " · " + whatItShows(r, c) + (zero ? " · all zeros" : "");
    button.title = caption;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = c.label + " of " + iso(r.name) + (c.rank ? ", " + whatItShows(r, c) : "");
    img.src = pic[1];
    const index = gallery.length;
    gallery.push({ src: pic[0], caption: caption });
    button.addEventListener("click", () => openLightbox(index, button));
    button.appendChild(img);
    cell.appendChild(button);
    if (zero) {  // an empty region, or every ReLU on its path gated off: said, never shown as a plain map
      cell.classList.add("zero");
      cell.appendChild(el("div", "zero-mark", "all zeros"));
    }
    return cell;
  }

  // Top-k: the meta and the input span the rows; each explained class is a row of its methods' maps.
  function rankedCells(row, meta, r) {
    row.classList.add("ranked");
    const span = "1 / span " + ranks;
    meta.style.gridRow = span;
    const input = inputCol >= 0 ? cellElement(r, columns[inputCol], r.img[inputCol]) : el("div", "cell missing", "no input");
    input.style.gridRow = span;
    row.appendChild(input);
    for (let rank = 1; rank <= ranks; rank++) {
      const label = el("div", "class-label");
      label.style.gridRow = String(rank);
      const name = r.targets && r.targets[rank - 1] != null ? r.targets[rank - 1]
        : rank === 1 ? (r.explains || r.label || "class " + r.cls) : null;
      const prob = r.targetProbs ? r.targetProbs[rank - 1] : rank === 1 && !r.explains ? r.prob : null;
      label.append(el("span", "rank", "#" + rank), el("bdi", "label", name === null ? "—" : name));
      if (typeof prob === "number") label.appendChild(el("span", "p", percent(prob)));
      row.appendChild(label);
      methods.forEach((m, j) => {
        const i = cellIndex.get(m + "@" + rank);
        const c = i === undefined ? { label: columns[cellIndex.get(m + "@1")]?.label ?? m, rank: rank } : columns[i];
        const cell = cellElement(r, c, i === undefined ? null : r.img[i]);
        cell.style.gridRow = String(rank);
        cell.style.gridColumn = String(4 + j);
        row.appendChild(cell);
      });
    }
    return row;
  }

  function pager(box, pages) {
    box.replaceChildren();
    const button = (label, target, name) => {
      const b = el("button", null, label);
      b.type = "button";
      b.dataset.action = name;
      b.disabled = target < 0 || target >= pages || target === state.page;
      b.addEventListener("click", () => { state.page = target; render(); window.scrollTo(0, 0); });
      return b;
    };
    box.append(
      button("« first", 0, "first"),
      button("‹ previous", state.page - 1, "prev"),
      el("span", "page-info", "page " + (state.page + 1) + " of " + pages),
      button("next ›", state.page + 1, "next"),
      button("last »", pages - 1, "last"),
    );
  }

  function render() {
    const pages = Math.max(1, Math.ceil(matching.length / pageSize));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const start = state.page * pageSize;
    const shown = matching.slice(start, start + pageSize);
    gallery = [];
    const frag = document.createDocumentFragment();
    for (const r of shown) frag.appendChild(rowElement(r));
    rowsBox.replaceChildren(frag);
    $("empty").hidden = matching.length > 0;
    $("match-count").textContent = matching.length === rows.length
      ? rows.length + " inputs"
      : matching.length + " of " + rows.length + " inputs match";
    pager($("pager-top"), pages);
    pager($("pager-bottom"), pages);
    writeHash();
  }

  function update() { recompute(); state.page = 0; render(); }

  // ---------------------------------------------------------------- failed inputs
  function failedList() {
    const failed = rows.filter((r) => !r.ok);
    if (!failed.length) return;
    $("failed-count").textContent = String(failed.length);
    const frag = document.createDocumentFragment();
    for (const r of failed) {
      const item = el("li");
      const name = el("bdi", "name", r.name);
      name.title = r.path || "";
      item.append(name, document.createTextNode(": "), el("bdi", "reason", r.error));
      frag.appendChild(item);
    }
    $("failed-list").appendChild(frag);
    $("failed").hidden = false;
  }

  // ---------------------------------------------------------------- lightbox
  const box = $("lightbox");
  const boxImg = $("lightbox-img");
  let current = -1;
  let opener = null;

  function showPicture(index) {
    current = (index + gallery.length) % gallery.length;
    const pic = gallery[current];
    boxImg.src = pic.src;
    boxImg.alt = pic.caption;
    $("lightbox-caption").textContent = pic.caption + "  (" + (current + 1) + "/" + gallery.length + ")";
    $("lightbox-open").href = pic.src;
  }

  function openLightbox(index, from) {
    opener = from;
    showPicture(index);
    box.hidden = false;
    $("lightbox-close").focus();
  }

  function closeLightbox() {
    box.hidden = true;
    boxImg.removeAttribute("src");
    current = -1;
    if (opener) opener.focus();
  }

  $("lightbox-close").addEventListener("click", closeLightbox);
  $("lightbox-prev").addEventListener("click", () => showPicture(current - 1));
  $("lightbox-next").addEventListener("click", () => showPicture(current + 1));
  box.addEventListener("click", (ev) => { if (ev.target === box) closeLightbox(); });
  document.addEventListener("keydown", (ev) => {
    if (box.hidden) return;
    if (ev.key === "Escape") closeLightbox();
    else if (ev.key === "ArrowLeft") showPicture(current - 1);
    else if (ev.key === "ArrowRight") showPicture(current + 1);
  });

  // ---------------------------------------------------------------- start
  readHash();
  fillClasses();
  syncControls();
  headRow();
  failedList();
  classSelect.addEventListener("change", () => { state.cls = classSelect.value; update(); });
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; update(); });
  sortSelect.addEventListener("change", () => { state.sort = sortSelect.value; update(); });
  nameInput.addEventListener("input", () => { state.q = nameInput.value; update(); });
  recompute();
  render();
  document.body.dataset.ready = "1";
})();

// guided-backprop explore: plain JavaScript, no build step, nothing from outside the app.
// Every name that comes from a file is put in the page as text (textContent), never as markup.
"use strict";

const state = { image: null, cls: null, methods: ["guided_backprop"], smooth: false,
                layer: "", channel: null, pos: null, shape: null };
const client = Math.random().toString(36).slice(2) + Date.now().toString(36);
const pending = {};  // kind -> {controller, seq}
let seq = 0;
const $ = (id) => document.getElementById(id);

function query(params) {
  return Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function busy(kind, on) {
  document.body.dataset["busy" + kind] = on ? "1" : "";
  const n = Object.keys(pending).length;
  $("status").textContent = n ? "computing…" : "";
}

// The newest request of a kind wins: the one before is aborted here and dropped by the server.
async function latest(kind, path, params) {
  if (pending[kind]) pending[kind].controller.abort();
  const mine = { controller: new AbortController(), seq: ++seq };
  pending[kind] = mine;
  busy(kind, true);
  try {
    const response = await fetch(path + "?" + query({ ...params, client: client + kind, seq: mine.seq }),
                                 { signal: mine.controller.signal });
    if (pending[kind] !== mine || response.status === 204) return null;  // superseded
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      showError(message);
      return null;
    }
    showError("");
    return response;
  } catch (err) {
    if (err.name !== "AbortError") showError(String(err));
    return null;
  } finally {
    if (pending[kind] === mine) { delete pending[kind]; busy(kind, false); }
  }
}

async function json(path, params) {
  const response = await fetch(path + (params ? "?" + query(params) : ""));
  const body = await response.json();
  if (!response.ok) { showError(body.error || response.statusText); return null; }
  return body;
}

function setPicture(img, blob, key) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.dataset.key = key;
}

// -- images ---------------------------------------------------------------------------------------
function buildStrip(images) {
  const strip = $("strip");
  for (const item of images) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = item.index;
    button.dataset.name = item.name.toLowerCase();
    button.title = item.name;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = "";
    img.src = "/api/images/" + item.index + "/thumb.png";
    const name = document.createElement("span");
    name.textContent = item.name;
    button.append(img, name);
    button.addEventListener("click", () => chooseImage(item));
    li.append(button);
    strip.append(li);
  }
  $("filter").addEventListener("input", () => {
    const words = $("filter").value.toLowerCase();
    for (const b of strip.querySelectorAll("button")) b.parentElement.hidden = !b.dataset.name.includes(words);
  });
}

async function chooseImage(item) {
  state.image = item.index;
  for (const b of $("strip").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.index == item.index));
  $("seen-name").textContent = item.name;
  const response = await latest("image", "/api/images/" + item.index + "/input.png", {});
  if (!response) return;
  setPicture($("seen"), await response.blob(), String(item.index));
  const top = await json("/api/images/" + item.index + "/classes", { k: 5 });
  if (!top || state.image !== item.index) return;
  const list = $("classes");
  list.replaceChildren();
  for (const c of top) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.cls = c.index;
    button.textContent = c.name + " (" + c.probability.toFixed(3) + ")";
    button.addEventListener("click", () => chooseClass(c.index));
    li.append(button);
    list.append(li);
  }
  await chooseClass(top[0].index);
  if (state.image === item.index) await loadLayers();  // their shapes for this image's size
  if (state.layer) await loadChannels();
}

// -- classes and methods --------------------------------------------------------------------------
async function chooseClass(index) {
  state.cls = index;
  for (const b of $("classes").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.cls == index));
  await loadPanel();
}

async function loadPanel() {
  if (state.image === null || state.cls === null) return;
  if (!state.methods.length) { showError("choose at least one method"); return; }
  const params = { image: state.image, class: state.cls, methods: state.methods.join(","), smooth: state.smooth ? 1 : 0 };
  const key = query(params);
  const response = await latest("panel", "/api/panel.png", params);
  if (!response) return;
  const blob = await response.blob();
  setPicture($("panel"), blob, key);
  $("download-png").href = $("panel").src;
  const command = await json("/api/command", params);
  if (command && $("panel").dataset.key === key) {
    $("command").textContent = command.command;
    const link = $("download-command");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([command.command + "\n"], { type: "text/plain" }));
  }
}

function buildMethods(methods) {
  const box = $("methods");
  for (const m of methods) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = m.name;
    input.checked = state.methods.includes(m.name);
    input.addEventListener("change", () => {
      state.methods = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      loadPanel();
    });
    label.title = m.paper;
    label.append(input, " " + m.title);
    box.append(label);
  }
}

// -- layers, channels, units ----------------------------------------------------------------------
async function loadLayers() {
  // The layers whose units and Grad-CAM make sense, with their output shapes for the image shown.
  const rows = await json("/api/layers", state.image === null ? null : { image: state.image });
  if (!rows) return;
  const select = $("layer");
  const keep = select.value;
  select.replaceChildren(...[...select.options].filter((o) => !o.value));
  for (const r of rows) {
    const option = document.createElement("option");
    option.value = r.name;
    option.textContent = r.name + " — " + r.type + " " + r.shape + " — field " + r.field;
    select.append(option);
  }
  select.value = keep;
}

async function loadChannels() {
  const box = $("channels");
  box.replaceChildren();
  $("unit-activation").removeAttribute("src");
  $("top-button").disabled = true;
  if (state.image === null || !state.layer) return;
  const response = await latest("channels", "/api/channels", { image: state.image, layer: state.layer });
  if (!response) return;
  const body = await response.json();
  state.shape = body.shape;
  const shown = body.channels.slice(0, 32);
  $("layer-info").textContent = body.layer + ": " + body.shape.join("x") + "; the " + shown.length +
    " strongest of " + body.channels.length + " channels (mean activation), strongest first";
  for (const c of shown) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.channel = c.channel;
    button.title = "channel " + c.channel + ": mean " + c.mean.toFixed(3) + ", max " + c.max.toFixed(3);
    const img = document.createElement("img");
    img.alt = "channel " + c.channel;
    img.src = "/api/activation.png?" + query({ image: state.image, layer: state.layer, channel: c.channel });
    const caption = document.createElement("span");
    caption.textContent = String(c.channel);
    button.append(img, caption);
    button.addEventListener("click", () => chooseChannel(c.channel));
    box.append(button);
  }
}

async function chooseChannel(channel) {
  state.channel = channel;
  state.pos = null;
  for (const b of $("channels").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.channel == channel));
  $("unit-activation").src = "/api/activation.png?" + query({ image: state.image, layer: state.layer, channel: channel });
  $("top-button").disabled = false;
  $("top-button").textContent = "what does channel " + channel + " respond to in the folder?";
  await loadUnit();
}

async function loadUnit() {
  const params = { image: state.image, layer: state.layer, channel: state.channel };
  if (state.pos) Object.assign(params, { y: state.pos[0], x: state.pos[1] });
  const key = query(params);
  const response = await latest("unit", "/api/unit.png", params);
  if (!response) return;
  setPicture($("unit-panel"), await response.blob(), key);
}

// "What does this unit respond to in the folder": a background job on the server, polled.
let polling = null;
async function topImages() {
  if (state.channel === null) return;
  const asked = { layer: state.layer, channel: state.channel };
  if (polling) clearTimeout(polling);
  $("top-images").removeAttribute("src");
  $("top-list").replaceChildren();
  const poll = async () => {
    if (asked.layer !== state.layer || asked.channel !== state.channel) return;  // superseded
    const job = await json("/api/top-images", asked);
    if (!job) return;
    const progress = $("top-progress");
    progress.hidden = job.state === "done";
    progress.max = Math.max(1, job.total);
    progress.value = job.done;
    $("top-status").textContent = job.state === "failed" ? "" : job.state === "done"
      ? "the " + job.top.length + " strongest of " + job.total + " images" + (job.reused ? " (from the cache)" : "")
      : "searching " + job.done + " / " + job.total + " images…";
    if (job.state === "failed") { showError(job.error); return; }
    if (job.state !== "done") { polling = setTimeout(poll, 300); return; }
    const response = await fetch("/api/top-images.png?" + query(asked));
    if (!response.ok) return;
    setPicture($("top-images"), await response.blob(), query(asked));
    const list = $("top-list");
    for (const t of job.top) {
      const li = document.createElement("li");
      li.textContent = t.name + " at (y, x) = (" + t.y + ", " + t.x + "), activation " + t.activation.toFixed(3);
      list.append(li);
    }
  };
  await poll();
}

function pickPosition(event) {
  if (state.channel === null || !state.shape) return;
  const img = $("unit-activation");
  const h = state.shape[1], w = state.shape[2];
  const y = Math.min(h - 1, Math.floor(event.offsetY / img.clientHeight * h));
  const x = Math.min(w - 1, Math.floor(event.offsetX / img.clientWidth * w));
  state.pos = [y, x];
  loadUnit();
}

// -- start ----------------------------------------------------------------------------------------
async function start() {
  const info = await json("/api/info");
  if (!info) return;
  $("model").textContent = "model: " + info.model;
  $("smooth-n").textContent = String(info.smooth);
  const labels = $("labels");
  for (const name of info.labels) {
    const option = document.createElement("option");
    option.value = name;
    labels.append(option);
  }
  buildMethods(info.methods);
  buildStrip(info.images);
  $("smooth").addEventListener("change", () => { state.smooth = $("smooth").checked; loadPanel(); });
  $("class-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const found = await json("/api/class", { class: $("class-name").value });
    if (found) await chooseClass(found.index);
  });
  $("unit-activation").addEventListener("click", pickPosition);
  $("top-button").addEventListener("click", topImages);
  $("layer").addEventListener("change", () => { state.layer = $("layer").value; state.channel = null; loadChannels(); });
  await loadLayers();
  if (info.images.length) await chooseImage(info.images[0]);
  document.body.dataset.ready = "1";
}

start();

// The many-camera job's dashboard: a card per camera (GET cameras, every second), its live preview
// (cameras/NAME/preview.mjpg), and the API's add and remove. Plain DOM: no framework, nothing fetched elsewhere.
"use strict";

const cards = new Map();
const grid = document.getElementById("cameras");
const summary = document.getElementById("summary");
const message = document.getElementById("message");

function figure(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function cardFor(name) {
  let card = cards.get(name);
  if (card) {
    return card;
  }
  card = document.createElement("article");
  card.className = "card";
  card.dataset.name = name;
  card.innerHTML = `<header><h2></h2><span class="state"></span>
      <button type="button" class="remove">Remove</button></header>
    <img class="preview">
    <dl><dt>fps in</dt><dd data-key="fps_in"></dd><dt>fps out</dt><dd data-key="fps_out"></dd>
      <dt>p95 latency</dt><dd data-key="p95"></dd><dt>dropped</dt><dd data-key="dropped"></dd>
      <dt>reconnects</dt><dd data-key="reconnects"></dd><dt>flicker</dt><dd data-key="flicker"></dd></dl>
    <p class="error"></p>`;
  card.querySelector("h2").textContent = name;  // (names and errors as text, never as markup)
  const preview = card.querySelector(".preview");
  preview.alt = `depth of ${name}`;
  preview.src = `cameras/${encodeURIComponent(name)}/preview.mjpg`;
  card.querySelector(".remove").addEventListener("click", () => remove(name));
  grid.appendChild(card);
  cards.set(name, card);
  return card;
}

function show(camera) {
  const card = cardFor(camera.name);
  const state = card.querySelector(".state");
  state.textContent = camera.state;
  state.className = `state ${camera.state}`;
  const latency = camera.latency_ms || {};
  const values = {
    fps_in: figure(camera.fps_in, 1), fps_out: figure(camera.fps_out, 1),
    p95: latency.p95 === null || latency.p95 === undefined ? "–" : `${figure(latency.p95, 0)} ms`,
    dropped: figure(camera.dropped, 0), reconnects: figure(camera.reconnects, 0),
    flicker: camera.flicker_pct === null || camera.flicker_pct === undefined ? "–"
      : `${figure(camera.flicker_pct, 2)} %`,
  };
  for (const cell of card.querySelectorAll("dd")) {
    cell.textContent = values[cell.dataset.key];
  }
  card.querySelector(".error").textContent = camera.error || "";
}

async function refresh() {
  try {
    const answer = await fetch("cameras", {credentials: "same-origin", cache: "no-store"});
    if (!answer.ok) {
      summary.textContent = `GET /cameras: ${answer.status}`;
      return;
    }
    const listed = (await answer.json()).cameras;
    const names = new Set(listed.map((camera) => camera.name));
    for (const [name, card] of cards) {
      if (!names.has(name)) {
        card.querySelector(".preview").src = "";  // (closes its preview stream)
        card.remove();
        cards.delete(name);
      }
    }
    listed.forEach(show);
    const running = listed.filter((camera) => camera.state === "running").length;
    summary.textContent = `${listed.length} cameras, ${running} running · ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    summary.textContent = `the service does not answer (${error})`;
  }
}

async function remove(name) {
  const answer = await fetch(`cameras/${encodeURIComponent(name)}`, {method: "DELETE", credentials: "same-origin"});
  message.textContent = answer.ok ? `${name} removed` : `${name}: ${(await answer.json()).error}`;
  refresh();
}

document.getElementById("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const entry = {};
  for (const [key, value] of new FormData(event.target)) {
    if (value.trim()) {
      entry[key] = value.trim();
    }
  }
  const answer = await fetch("cameras", {method: "POST", credentials: "same-origin",
                                         headers: {"Content-Type": "application/json"}, body: JSON.stringify(entry)});
  const body = await answer.json();
  message.textContent = answer.ok ? `${body.name} added${body.persisted ? "" : " (not written to the cameras file)"}`
    : body.error;
  if (answer.ok) {
    event.target.reset();
  }
  refresh();
});

refresh();
setInterval(refresh, 1000);

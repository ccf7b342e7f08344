// The many-camera job's dashboard: a card per camera (GET cameras, every second), its live preview, and the API's
// add and remove. Plain DOM: no framework, nothing fetched elsewhere.
// Previews are polled pictures (cameras/NAME/snapshot.jpg?after=N), not MJPEG streams: a browser keeps at most 6
// connections to a host, and a stream per card would hold them all from the 6th camera on (the page frozen). Only
// cards on screen poll, each at the service's preview rate, with one request at a time.
"use strict";

const cards = new Map();
const grid = document.getElementById("cameras");
const summary = document.getElementById("summary");
const message = document.getElementById("message");
let previewFps = 5;
const onScreen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    entry.target.dataset.visible = entry.isIntersecting ? "1" : "";
  }
});

function pause(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}

// One card's preview, until its card is gone: the newest picture when there is one newer than the last shown
async function pollPreview(name, card) {
  const image = card.querySelector(".preview");
  let after = 0;
  while (cards.get(name) === card) {
    const started = performance.now();
    if (card.dataset.visible && !document.hidden) {
      try {
        const answer = await fetch(`cameras/${encodeURIComponent(name)}/snapshot.jpg?after=${after}`,
                                   {credentials: "same-origin", cache: "no-store"});
        if (answer.status === 200) {
          after = Number(answer.headers.get("X-Picture")) || after;
          const shown = image.src;
          image.src = URL.createObjectURL(await answer.blob());
          if (shown.startsWith("blob:")) {
            URL.revokeObjectURL(shown);
          }
        }
      } catch (error) {
        // (the service away for a moment: the next round tries again)
      }
    }
    await pause(Math.max(50, 1000 / previewFps - (performance.now() - started)));
  }
  if (image.src.startsWith("blob:")) {
    URL.revokeObjectURL(image.src);
  }
}

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
      <dt>reconnects</dt><dd data-key="reconnects"></dd><dt>flicker</dt><dd data-key="flicker"></dd>
      <dt>depth faults</dt><dd data-key="faults"></dd></dl>
    <p class="error"></p>`;
  card.querySelector("h2").textContent = name;  // (names and errors as text, never as markup)
  card.querySelector(".preview").alt = `depth of ${name}`;
  card.querySelector(".remove").addEventListener("click", () => remove(name));
  grid.appendChild(card);
  cards.set(name, card);
  onScreen.observe(card);
  pollPreview(name, card);
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
    faults: figure(camera.faulty_depth_frames, 0),
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
    const answered = await answer.json();
    const listed = answered.cameras;
    previewFps = answered.preview_fps || previewFps;
    const names = new Set(listed.map((camera) => camera.name));
    for (const [name, card] of cards) {
      if (!names.has(name)) {
        onScreen.unobserve(card);
        card.remove();
        cards.delete(name);  // (its preview's poll ends)
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

// The page of `neuraldx7 serve`: everything it shows comes from the JSON API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,          // /api/info
  cart: null,          // /api/cartridge: seed, temperature, voices, latents
  selected: null,      // voice number (1-32) in the editor
  z: null,             // the editor's latent
  original: null,      // the selected voice's 155 values, to count the edited ones
  generation: 0,       // bumped on each new cartridge or selection: late answers are dropped
  busy: false,         // a decode is in flight
  again: false,        // the latent moved meanwhile: decode once more when it lands
};

function query(params) {
  return "?" + new URLSearchParams(params).toString();
}

async function api(path, params) {
  const answer = await fetch(path + query(params));
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function randomSeed() {
  const word = new Uint32Array(1);
  crypto.getRandomValues(word);
  return word[0] >>> 1;
}

function cartridgeParams() {
  const params = { seed: state.cart.seed, temperature: state.cart.temperature };
  if (state.cart.like) params.like = state.cart.like;  // "more like this": SEED:INDEX of the source voice
  if (state.cart.mutate) {  // "mutate": 32 mutants of voice SEED:INDEX, AMOUNT of their values changed
    params.mutate = state.cart.mutate;
    params.amount = state.cart.amount;
  }
  return params;
}

function voiceParams(index, z) {
  const params = { ...cartridgeParams(), index };
  if (z) params.z = z.join(",");
  return params;
}

function play(params) {
  if (!state.info.audio) return;
  const player = $("player");
  player.src = "/api/voice.wav" + query(params);
  player.play().catch(() => {});  // a browser may refuse to start sound before the first click
}

async function loadCartridge(seed, temperature, how, source = {}) {
  status("sampling...");
  const generation = ++state.generation;
  const params = { temperature };
  if (seed !== null) params.seed = seed;
  for (const key of ["like", "mutate", "amount"]) if (source[key]) params[key] = source[key];
  let cart;
  try {
    cart = await api("/api/cartridge", params);
  } catch (e) {
    status(e.message, true);
    return;
  }
  if (generation !== state.generation) return;
  state.cart = cart;
  $("seed").value = cart.seed;
  $("temperature").value = cart.temperature;
  $("download").href = "/api/cartridge.syx" + query(cartridgeParams());
  const address = query(cartridgeParams());
  if (how === "push") history.pushState(null, "", address);
  else history.replaceState(null, "", address);
  showVoices();
  status(`seed ${cart.seed}, temperature ${cart.temperature}` + (cart.like ? `, like voice ${cart.like}` : "")
         + (cart.mutate ? `, mutants of voice ${cart.mutate} (${Math.round(100 * cart.amount)}% of values)` : ""));
  if (state.selected !== null) await select(state.selected);
}

function showVoices() {
  const body = $("voices");
  body.replaceChildren();
  for (const voice of state.cart.voices) {
    const row = document.createElement("tr");
    row.dataset.index = voice.index;
    row.classList.toggle("selected", voice.index === state.selected);
    const cells = [voice.index, voice.name, voice.algorithm];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 1) cell.className = "name";
      row.append(cell);
    });
    const buttons = document.createElement("td");
    const playButton = document.createElement("button");
    playButton.type = "button";
    playButton.className = "play";
    playButton.textContent = "Play";
    playButton.disabled = !state.info.audio;
    playButton.addEventListener("click", () => play(voiceParams(voice.index)));
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.addEventListener("click", () => select(voice.index));
    buttons.append(playButton, " ", edit);
    row.append(buttons);
    body.append(row);
  }
}

async function select(index) {
  const generation = ++state.generation;
  state.selected = index;
  state.z = state.cart.latents[index - 1].slice();
  for (const row of $("voices").rows) row.classList.toggle("selected", Number(row.dataset.index) === index);
  let voice;
  try {
    voice = await api("/api/voice", voiceParams(index));
  } catch (e) {
    status(e.message, true);
    return;
  }
  if (generation !== state.generation) return;
  state.original = voice.values;
  $("editor-title").textContent = `Voice ${index} of seed ${state.cart.seed}`;
  buildSliders();
  showEdit(voice);
  $("editor").hidden = false;
}

function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  const { low, high } = state.info;
  state.z.forEach((value, d) => {
    const line = document.createElement("label");
    line.className = "slider";
    const name = document.createElement("span");
    name.textContent = `z${d + 1}`;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = low[d];
    slider.max = high[d];
    slider.step = "any";
    slider.value = value;
    slider.dataset.dim = d;
    const shown = document.createElement("output");
    shown.textContent = value.toFixed(2);
    slider.addEventListener("input", () => {
      state.z[d] = Number(slider.value);
      shown.textContent = state.z[d].toFixed(2);
      decode();
    });
    line.append(name, slider, shown);
    box.append(line);
  });
}

function showEdit(voice) {
  $("edit-name").textContent = voice.name;
  $("edit-alg").textContent = voice.algorithm;
  const changed = voice.values.filter((v, i) => v !== state.original[i]).length;
  $("edit-changed").textContent = changed ? `${changed} of 155 values changed` : "as generated";
  $("voice-download").href = "/api/voice.syx" + query(voiceParams(voice.index, changed ? voice.z : null));
  const editor = $("editor");
  editor.dataset.z = voice.z.join(",");
  editor.dataset.decodes = Number(editor.dataset.decodes) + 1;
}

// Decodes the editor's latent; while one decode is in flight, moves only mark it stale, so
// the page asks for the latest latent next and never queues a backlog.
async function decode() {
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    do {
      state.again = false;
      const generation = state.generation;
      const params = voiceParams(state.selected, state.z);
      const voice = await api("/api/voice", params);
      if (generation !== state.generation) break;
      showEdit(voice);
      if ($("autoplay").checked) play(params);
    } while (state.again);
  } catch (e) {
    status(e.message, true);
  } finally {
    state.busy = false;
  }
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  const seed = params.get("seed");
  return { seed: seed === null ? randomSeed() : seed, temperature: params.get("temperature") ?? "1",
           source: { like: params.get("like"), mutate: params.get("mutate"), amount: params.get("amount") } };
}

async function start() {
  try {
    state.info = await api("/api/info", {});
  } catch (e) {
    status(`cannot reach the server: ${e.message}`, true);
    return;
  }
  const { info } = state;
  $("model").textContent = `Model: ${info.model.path}` + (info.model.step ? ` (step ${info.model.step})` : "");
  $("range-source").textContent = info.range_source === "features"
    ? "mean \u00b1 3 std of the training voices' latents" : "\u00b1 3, the prior; run `neuraldx7 features` for data ranges";
  if (!info.audio) {
    $("audio-install").textContent = info.audio_install;
    $("audio-note").hidden = false;
    $("player").hidden = true;
    $("edit-play").disabled = true;
    $("autoplay").disabled = true;
  }
  $("new").addEventListener("click", () => loadCartridge(randomSeed(), $("temperature").value, "push"));
  $("seed").addEventListener("change", () => loadCartridge($("seed").value, $("temperature").value, "push"));
  $("temperature").addEventListener("change", () => loadCartridge(state.cart ? state.cart.seed : null,
                                                                    $("temperature").value, "push"));
  $("edit-play").addEventListener("click", () => play(voiceParams(state.selected, state.z)));
  $("reset").addEventListener("click", () => {
    state.z = state.cart.latents[state.selected - 1].slice();
    buildSliders();
    decode();
  });
  $("more-like").addEventListener("click", () => loadCartridge(
    randomSeed(), state.cart.temperature, "push", { like: `${state.cart.seed}:${state.selected}` }));
  $("mutate").addEventListener("click", () => loadCartridge(
    randomSeed(), state.cart.temperature, "push",
    { mutate: `${state.cart.seed}:${state.selected}`, amount: $("amount").value / 100 }));
  window.addEventListener("popstate", () => {
    const { seed, temperature, source } = fromAddress();
    loadCartridge(seed, temperature, "replace", source);
  });
  const { seed, temperature, source } = fromAddress();
  await loadCartridge(seed, temperature, "replace", source);
}

start();

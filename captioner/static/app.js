// The captioner page: upload photos to /api/caption, then draw the attention of the word under the
// pointer (or the slider, or keyboard focus) over the photo. Plain JS, nothing loaded from elsewhere.
"use strict";

(function () {
  const SIDE = 336;                       // canvas side in pixels

  // Bicubic upsampling as torch.nn.functional.interpolate(mode="bicubic", align_corners=False)
  // (the overlays of captioner/render.py): A = -0.75, source index (i + 0.5) * in / out - 0.5,
  // neighbours clamped at the border. Then negatives cut to 0 and the map scaled so its peak is 1.
  const A = -0.75;
  function cubicWeights(t) {
    const near = (x) => ((A + 2) * x - (A + 3)) * x * x + 1;             // |x| <= 1
    const far = (x) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;         // 1 < |x| < 2
    return [far(t + 1), near(t), near(1 - t), far(2 - t)];
  }
  function axis(inSize, outSize) {        // per output index: 4 source indices and 4 weights
    const scale = inSize / outSize, idx = [], wts = [];
    for (let i = 0; i < outSize; i++) {
      const src = (i + 0.5) * scale - 0.5, base = Math.floor(src);
      const w = cubicWeights(src - base);
      for (let k = 0; k < 4; k++) {
        idx.push(Math.min(Math.max(base - 1 + k, 0), inSize - 1));
        wts.push(w[k]);
      }
    }
    return { idx, wts };
  }
  // grid: rows of numbers (G x G); returns Float32Array(side * side) in [0, 1], row-major.
  function upsample(grid, side) {
    const g = grid.length, ax = axis(g, side);
    const rows = new Float32Array(g * side);           // along x first, for each source row
    for (let r = 0; r < g; r++) {
      const row = grid[r];
      for (let x = 0; x < side; x++) {
        let v = 0;
        for (let k = 0; k < 4; k++) v += ax.wts[4 * x + k] * row[ax.idx[4 * x + k]];
        rows[r * side + x] = v;
      }
    }
    const out = new Float32Array(side * side);
    let peak = 0;
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        let v = 0;
        for (let k = 0; k < 4; k++) v += ax.wts[4 * y + k] * rows[ax.idx[4 * y + k] * side + x];
        v = Math.max(v, 0);
        out[y * side + x] = v;
        if (v > peak) peak = v;
      }
    }
    peak = Math.max(peak, 1e-12);
    for (let i = 0; i < out.length; i++) out[i] /= peak;
    return out;
  }
  // matplotlib's "jet" colour map (piecewise linear), value in [0, 1] -> [r, g, b] in 0..255.
  const JET = {
    r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
    g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
    b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
  };
  function piece(points, v) {
    for (let i = 1; i < points.length; i++) {
      if (v <= points[i][0]) {
        const [x0, y0] = points[i - 1], [x1, y1] = points[i];
        return y0 + (y1 - y0) * (v - x0) / (x1 - x0);
      }
    }
    return points[points.length - 1][1];
  }
  function jet(v) {
    v = Math.min(Math.max(v, 0), 1);
    return [piece(JET.r, v), piece(JET.g, v), piece(JET.b, v)].map((c) => Math.round(255 * c));
  }

  // Draw the photo, then the word's map over it: opacity 0.1 + 0.7 * heat (render.heat_alpha), so the
  // photo stays visible where the word does not look. Hard attention: the attended cell outlined.
  function draw(canvas, photo, heat, cell, grid) {
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(photo, 0, 0, SIDE, SIDE);
    if (!heat) return;
    const base = ctx.getImageData(0, 0, SIDE, SIDE), px = base.data;
    for (let i = 0; i < heat.length; i++) {
      const [r, g, b] = jet(heat[i]), a = 0.1 + 0.7 * heat[i], o = 4 * i;
      px[o] = Math.round(px[o] * (1 - a) + r * a);
      px[o + 1] = Math.round(px[o + 1] * (1 - a) + g * a);
      px[o + 2] = Math.round(px[o + 2] * (1 - a) + b * a);
    }
    ctx.putImageData(base, 0, 0);
    if (cell) {
      const size = SIDE / grid;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(cell[1] * size + 1.5, cell[0] * size + 1.5, size - 3, size - 3);
    }
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const status = (text) => { $("#status").textContent = text; };

  async function loadModels() {
    const select = $("#model");
    try {
      const response = await fetch("/api/models");
      const data = await response.json();
      select.textContent = "";
      for (const m of data.models) {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.default ? `${m.name} (default)` : m.name;
        option.selected = m.default;
        select.append(option);
      }
    } catch (e) {
      select.textContent = "";
      select.append(new Option("(default)", ""));
      status(`Could not list the models: ${e}`);
    }
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the preview could not be shown"));
      img.src = url;
    });
  }

  function show(card, result, photo) {
    const words = result.words, heats = new Map();
    const canvas = $(".overlay", card), figcap = $(".focus-word", card), slider = $(".slider", card);
    const buttons = [];
    $(".log-prob", card).textContent = result.log_prob.toFixed(3);
    const holder = $(".words", card);
    holder.textContent = "";
    const select = (i) => {
      if (!words.length) { draw(canvas, photo, null); return; }
      if (!heats.has(i)) heats.set(i, upsample(result.attention[i], SIDE));
      const cell = result.locations ? result.locations[i] : null;
      draw(canvas, photo, heats.get(i), cell, result.grid_size);
      buttons.forEach((b, k) => b.setAttribute("aria-pressed", String(k === i)));
      slider.value = String(i);
      slider.setAttribute("aria-valuetext", `${words[i]} (word ${i + 1} of ${words.length})`);
      let where = "";
      if (cell) where = `; attended cell: row ${cell[0] + 1}, column ${cell[1] + 1} of ${result.grid_size}`;
      figcap.textContent = `Attention of “${words[i]}” (word ${i + 1} of ${words.length})${where}`;
      canvas.setAttribute("aria-label", `Photo with the attention of the word “${words[i]}” drawn over it${where}`);
      canvas.dataset.word = String(i);
    };
    words.forEach((w, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "word";
      b.textContent = w;
      b.setAttribute("aria-pressed", "false");
      b.setAttribute("aria-label", `${w}, word ${i + 1} of ${words.length}: show where the model looked`);
      for (const ev of ["mouseenter", "focus", "click"]) b.addEventListener(ev, () => select(i));
      holder.append(b);
      buttons.push(b);
    });
    const sliderId = `slider-${card.id}`;
    slider.id = sliderId;
    $(".slider-label", card).htmlFor = sliderId;
    slider.max = String(Math.max(words.length - 1, 0));
    slider.disabled = words.length < 2;
    slider.addEventListener("input", () => select(Number(slider.value)));
    const body = $("tbody", card);
    body.textContent = "";
    result.candidates.forEach((c, k) => {
      const tr = document.createElement("tr");
      if (k === 0) tr.className = "best";
      const td1 = document.createElement("td"), td2 = document.createElement("td");
      td1.textContent = c.caption || "(empty)";
      td2.textContent = c.log_prob.toFixed(3);
      td2.className = "num";
      tr.append(td1, td2);
      body.append(tr);
    });
    $(".body", card).hidden = false;
    select(0);
  }

  let counter = 0;
  function newCard(file) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    card.id = `result-${++counter}`;
    $(".name", card).textContent = file.name || "photo";
    card.setAttribute("aria-busy", "true");
    return card;
  }

  async function captionOne(file, card) {
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    form.append("beam_size", $("#beam").value || "3");
    if ($("#model").value) form.append("model", $("#model").value);
    form.append("preview", "1");
    try {
      const response = await fetch("/api/caption", { method: "POST", body: form });
      let data;
      try { data = await response.json(); } catch (e) { data = { error: `HTTP ${response.status}` }; }
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      const photo = await loadImage(data.preview);
      show(card, data, photo);
      card.classList.add("done");
      return true;
    } catch (e) {
      const err = $(".error", card);
      err.textContent = `Could not caption this file: ${e.message}`;
      err.hidden = false;
      card.classList.add("failed");
      return false;
    } finally {
      card.removeAttribute("aria-busy");
    }
  }

  async function captionAll(files) {
    files = Array.from(files);
    if (!files.length) return;
    status(files.length === 1 ? `Captioning ${files[0].name}…` : `Captioning ${files.length} photos…`);
    // The newest photos first, those chosen together in the order given.
    const cards = files.map(newCard);
    $("#results").prepend(...cards);
    const ok = await Promise.all(files.map((f, i) => captionOne(f, cards[i])));
    const good = ok.filter(Boolean).length;
    status(`Captioned ${good} of ${files.length} ${files.length === 1 ? "photo" : "photos"}.` +
           (good ? " Point at a word, focus it with Tab, or move the slider, to see where the model looked." : ""));
  }

  function setup() {
    const input = $("#photos"), drop = $("#drop");
    input.addEventListener("change", () => { captionAll(input.files); input.value = ""; });
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); captionAll(e.dataTransfer.files); });
    // A file dropped beside the box is not opened by the browser in place of the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("#upload").addEventListener("submit", (e) => e.preventDefault());
    loadModels();
  }

  window.captionerOverlay = { upsample, jet, SIDE };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();

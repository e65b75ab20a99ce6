/* The page of `lamina serve`: a tab per served run, built from what GET /runs declares.
 *
 * Nothing here names a task. The input widget comes from the verb's declared input kind (image,
 * audio, text or none), the options form from its declared options, and the way a result is drawn
 * from the fields the result holds (predictions -> bars, objects -> boxes and masks over the image,
 * words with polygons -> outlined words, attention -> heat-maps, streamed pieces -> growing text).
 */
"use strict";

const lamina = (() => {
  // ----- small helpers ---------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const percent = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
  const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const number = (v) => (Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3));
  const visibleChar = (c) => ({ "\n": "⏎", " ": "␣", "\t": "⇥" })[c] ?? c;

  // Colours for objects, and a heat scale (dark blue -> teal -> yellow) for attention.
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#469990", "#9a6324", "#800000", "#000075"];
  const HEAT = [[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104], [244, 136, 73],
    [254, 188, 43], [240, 249, 33]];

  function heat(t) {
    const x = Math.min(Math.max(t, 0), 1) * (HEAT.length - 1);
    const i = Math.min(Math.floor(x), HEAT.length - 2);
    const f = x - i;
    return HEAT[i].map((a, k) => Math.round(a + f * (HEAT[i + 1][k] - a)));
  }

  function rgb(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // ----- COCO compressed RLE ---------------------------------------------------------------------
  /** COCO's compressed RLE ({size: [h, w], counts: string}) -> a Uint8Array of h * w, row-major.
   * The counts are runs of 0s and 1s over the mask in column-major order, each written as 5-bit
   * groups in characters from 48, and from the third on as the difference from the run two before. */
  function decodeRLE(rle) {
    const [h, w] = rle.size;
    const s = rle.counts;
    const counts = [];
    for (let p = 0; p < s.length; ) {
      let x = 0;
      let k = 0;
      let more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = (c & 0x20) !== 0;
        p += 1;
        k += 1;
        if (!more && c & 0x10) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    const mask = new Uint8Array(h * w);
    let i = 0;
    counts.forEach((run, j) => {
      for (let end = Math.min(i + run, h * w); i < end; i++) {
        if (j % 2) mask[(i % h) * w + Math.floor(i / h)] = 1;
      }
    });
    return mask;
  }

  // ----- WAV encoding ----------------------------------------------------------------------------
  /** Mono float samples in [-1, 1] -> a 16-bit PCM WAV Blob. */
  function encodeWAV(samples, rate) {
    const buffer = new ArrayBuffer(44 + 2 * samples.length);
    const view = new DataView(buffer);
    const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + 2 * samples.length, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true); // size of the fmt chunk
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, 2 * rate, true); // bytes per second
    view.setUint16(32, 2, true); // bytes per frame
    view.setUint16(34, 16, true); // bits per sample
    text(36, "data");
    view.setUint32(40, 2 * samples.length, true);
    samples.forEach((v, i) => {
      const c = Math.max(-1, Math.min(1, v));
      view.setInt16(44 + 2 * i, c < 0 ? c * 0x8000 : c * 0x7fff, true);
    });
    return new Blob([buffer], { type: "audio/wav" });
  }

  /** Records the microphone with the Web Audio API: start(), then stop() -> a WAV Blob. */
  class Recorder {
    async start() {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
      this.context = new AudioContext();
      const source = this.context.createMediaStreamSource(this.stream);
      this.node = this.context.createScriptProcessor(4096, 1, 1);
      this.chunks = [];
      this.node.onaudioprocess = (e) => this.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
      source.connect(this.node);
      this.node.connect(this.context.destination); // a script processor runs only while connected
      this.started = performance.now();
    }

    async stop() {
      this.node.disconnect();
      this.stream.getTracks().forEach((t) => t.stop());
      const rate = this.context.sampleRate;
      await this.context.close();
      const length = this.chunks.reduce((n, c) => n + c.length, 0);
      const samples = new Float32Array(length);
      let offset = 0;
      for (const c of this.chunks) {
        samples.set(c, offset);
        offset += c.length;
      }
      return { blob: encodeWAV(samples, rate), seconds: length / rate };
    }
  }

  // ----- inputs ----------------------------------------------------------------------------------
  /** The widget of a declared input kind: {node, items(): [File|Blob|string], describe(): [{url, name}]}. */
  const INPUTS = {
    image: imageInput,
    audio: audioInput,
    text: textInput,
  };

  function filePicker(kind, accept, onFiles) {
    const id = `pick-${Math.random().toString(36).slice(2)}`;
    const input = el("input", { type: "file", id, accept, multiple: true, class: "visually-hidden",
      "data-testid": `${kind}-file`, onchange: () => onFiles([...input.files]) });
    const zone = el("label", { for: id, class: "drop", "data-testid": "drop-zone" },
      el("span", { class: "drop-title", text: `Drop ${kind === "image" ? "images" : "audio files"} here` }),
      el("span", { class: "drop-hint", text: "or click to pick files" }));
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      onFiles([...e.dataTransfer.files]);
    });
    return { input, zone };
  }

  function imageInput() {
    let files = [];
    let source = "files"; // or "drawing": what was given last is what is sent
    const previews = el("div", { class: "previews", "data-testid": "previews" });
    const { input, zone } = filePicker("image", "image/*,.png,.jpg,.jpeg,.gif,.bmp,.tif,.tiff,.webp", (picked) => {
      files = picked;
      source = "files";
      previews.replaceChildren(...files.map((f) => el("figure", {},
        el("img", { src: URL.createObjectURL(f), alt: f.name }), el("figcaption", { text: f.name }))));
      canvasBox.classList.remove("chosen");
      clear();
    });

    const canvas = el("canvas", { width: 280, height: 280, class: "draw", "data-testid": "draw-canvas",
      "aria-label": "Drawing canvas: draw with the mouse or a finger" });
    const pen = canvas.getContext("2d");
    const clear = () => {
      pen.fillStyle = "#000";
      pen.fillRect(0, 0, canvas.width, canvas.height);
      drawn = false;
    };
    let drawn = false;
    let last = null;
    clear();
    const at = (e) => {
      const r = canvas.getBoundingClientRect();
      return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
    };
    canvas.addEventListener("pointerdown", (e) => {
      canvas.setPointerCapture?.(e.pointerId);
      last = at(e);
      drawn = true;
      source = "drawing";
      canvasBox.classList.add("chosen");
      previews.replaceChildren();
      stroke(last, last);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const here = at(e);
      stroke(last, here);
      last = here;
    });
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) canvas.addEventListener(name, () => { last = null; });
    function stroke(a, b) {
      pen.strokeStyle = "#fff";
      pen.lineWidth = 22;
      pen.lineCap = "round";
      pen.lineJoin = "round";
      pen.beginPath();
      pen.moveTo(...a);
      pen.lineTo(...b);
      pen.stroke();
    }
    const canvasBox = el("div", { class: "draw-box" }, canvas,
      el("div", { class: "draw-tools" },
        el("span", { class: "hint", text: "…or draw one (white on black)" }),
        el("button", { type: "button", class: "small", "data-testid": "clear-canvas", onclick: clear, text: "Clear" })));

    return {
      node: el("div", { class: "input image-input" },
        el("div", { class: "pick" }, input, zone, previews), canvasBox),
      async items() {
        if (source === "drawing" && drawn) {
          const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
          return [new File([blob], "drawing.png", { type: "image/png" })];
        }
        return files;
      },
      empty: () => (source === "drawing" ? !drawn : files.length === 0),
    };
  }

  function audioInput() {
    let files = [];
    const players = el("div", { class: "players", "data-testid": "audio-inputs" });
    const show = () => players.replaceChildren(...files.map((f) => el("figure", {},
      el("audio", { controls: true, src: URL.createObjectURL(f) }), el("figcaption", { text: f.name }))));
    const { input, zone } = filePicker("audio", "audio/*,.wav,.flac,.ogg", (picked) => {
      files = picked;
      show();
    });
    let recorder = null;
    const clock = el("span", { class: "clock", "data-testid": "record-clock", "aria-live": "off" });
    let ticking = null;
    const record = el("button", { type: "button", class: "record", "data-testid": "record",
      "aria-pressed": "false", text: "● Record" });
    record.addEventListener("click", async () => {
      if (!recorder) {
        recorder = new Recorder();
        try {
          await recorder.start();
        } catch (err) {
          recorder = null;
          record.dispatchEvent(new CustomEvent("lamina-error", { bubbles: true,
            detail: `the microphone could not be opened: ${err.message || err}` }));
          return;
        }
        record.textContent = "■ Stop";
        record.setAttribute("aria-pressed", "true");
        record.classList.add("on");
        ticking = setInterval(() => {
          clock.textContent = `${((performance.now() - recorder.started) / 1000).toFixed(1)} s`;
        }, 100);
      } else {
        clearInterval(ticking);
        const { blob, seconds } = await recorder.stop();
        recorder = null;
        record.textContent = "● Record";
        record.setAttribute("aria-pressed", "false");
        record.classList.remove("on");
        clock.textContent = `${seconds.toFixed(1)} s recorded`;
        files = [new File([blob], "recording.wav", { type: "audio/wav" })];
        show();
      }
    });
    return {
      node: el("div", { class: "input audio-input" },
        el("div", { class: "pick" }, input, zone),
        el("div", { class: "recorder" }, record, clock, el("span", { class: "hint", text: "with the microphone" })),
        players),
      async items() {
        return files;
      },
      empty: () => files.length === 0,
    };
  }

  function textInput(name) {
    const id = `text-${Math.random().toString(36).slice(2)}`;
    const area = el("textarea", { id, rows: 4, "data-testid": "text-input", spellcheck: "false",
      placeholder: "One text a line" });
    return {
      node: el("div", { class: "input text-input" },
        el("label", { for: id, text: `${capital(name)} (one a line)` }), area),
      async items() {
        return area.value.split("\n").map((s) => s.trim()).filter(Boolean);
      },
      empty: () => !area.value.trim(),
    };
  }

  // ----- options ---------------------------------------------------------------------------------
  /** The form of a verb's declared options: {node, values(): {name: typed value}} (only those set). */
  function optionsForm(options, limits) {
    const fields = options.map((o) => {
      const id = `opt-${Math.random().toString(36).slice(2)}`;
      const label = o.name.replaceAll("_", " ");
      let input;
      if (o.choices) {
        input = el("select", { id, name: o.name },
          o.default === undefined ? el("option", { value: "", text: "(default)" }) : null,
          o.choices.map((c) => el("option", { value: c, text: c, selected: c === o.default })));
      } else if (o.type === "bool") {
        input = el("input", { id, name: o.name, type: "checkbox", checked: o.default === true });
      } else if (o.type === "int" || o.type === "float") {
        input = el("input", { id, name: o.name, type: "number", step: o.type === "int" ? 1 : "any",
          value: o.default, placeholder: o.default === undefined ? "default" : null,
          max: limits?.options?.[o.name], inputmode: o.type === "int" ? "numeric" : "decimal" });
      } else {
        input = el("input", { id, name: o.name, type: "text", value: o.default, class: "wide",
          placeholder: o.default === undefined ? "default" : null });
      }
      const node = el("div", { class: `option ${o.type}`, title: o.help },
        o.type === "bool" ? [input, el("label", { for: id, text: label })] : [el("label", { for: id, text: label }), input],
        o.help ? el("small", { text: o.help }) : null);
      const value = () => {
        if (o.type === "bool") return input.checked ? true : o.default === true ? false : undefined;
        const raw = input.value.trim();
        if (raw === "") return o.type === "str" && o.default !== undefined ? raw : undefined;
        if (o.type === "int" || o.type === "float") return Number(raw);
        return raw;
      };
      return { o, node, value };
    });
    return {
      node: fields.length
        ? el("fieldset", { class: "options", "data-testid": "options" }, el("legend", { text: "Options" }),
          fields.map((f) => f.node))
        : null,
      values() {
        const given = {};
        for (const f of fields) {
          const v = f.value();
          if (v !== undefined && !(typeof v === "number" && Number.isNaN(v))) given[f.o.name] = v;
        }
        return given;
      },
    };
  }

  // ----- calling a verb --------------------------------------------------------------------------
  async function refusalOf(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error;
    } catch (_) { /* not JSON: the status says it */ }
    return `${response.status} ${response.statusText}`;
  }

  async function call(verb, items, options, onPiece) {
    let init;
    if (verb.content_type === "multipart/form-data") {
      const form = new FormData();
      for (const item of items) form.append(verb.input.name, item, item.name);
      for (const [k, v] of Object.entries(options)) form.append(k, String(v));
      init = { method: "POST", body: form };
    } else {
      const body = { ...options };
      if (verb.input) body[verb.input.name] = items;
      init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    }
    const response = await fetch(verb.path, init);
    if (!response.ok) throw new Error(await refusalOf(response));
    if (!verb.stream) return response.json();

    // newline-delimited JSON: {"piece"} lines, then {"result"} (or {"error"})
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      pending += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = pending.split("\n");
      pending = done ? "" : lines.pop();
      const pieces = [];
      for (const line of lines) {
        if (!line.trim()) continue;
        const message = JSON.parse(line);
        if ("piece" in message) pieces.push(message.piece);
        else if ("error" in message) throw new Error(message.error);
        else if ("result" in message) {
          if (pieces.length) onPiece(pieces.join(""), pieces.length);
          return message.result;
        }
      }
      if (pieces.length) onPiece(pieces.join(""), pieces.length);
      if (done) throw new Error("the answer ended before its result");
    }
  }

  // ----- results ---------------------------------------------------------------------------------
  const TEXT_FIELDS = ["transcript", "translation", "caption", "text"];
  const DETAIL_FIELDS = ["score", "confidence", "audio_seconds", "seconds", "real_time_factor", "characters",
    "chars_per_s"];

  function bars(items, labelOf) {
    return el("ol", { class: "bars", "data-testid": "bars" }, items.map((item) => {
      const label = labelOf(item);
      return el("li", { class: "bar", "data-testid": "bar" },
        el("span", { class: "bar-label", "data-testid": "bar-label", title: label, text: label }),
        el("span", { class: "bar-track", role: "meter", "aria-valuemin": 0, "aria-valuemax": 1,
          "aria-valuenow": item.probability, "aria-label": label },
        el("span", { class: "bar-fill", style: `width: ${(100 * item.probability).toFixed(2)}%` })),
        el("span", { class: "bar-value", "data-testid": "bar-value", text: percent(item.probability) }));
    }));
  }

  /** An image at most `size` px wide with a canvas over it, drawn by draw(ctx, scale). */
  function overlaid(url, entry, size, label, draw) {
    const img = el("img", { src: url, alt: entry.input || "input" });
    const canvas = el("canvas", { class: "overlay", "data-testid": "overlay", "aria-label": label, role: "img" });
    const figure = el("div", { class: "overlaid" }, img, canvas);
    img.addEventListener("load", () => {
      const w = entry.width || img.naturalWidth;
      const h = entry.height || img.naturalHeight;
      const room = Math.min(size, Math.max(80, document.documentElement.clientWidth - 80)); // narrow screens
      const scale = Math.min(room / w, (1.2 * room) / h, 8);
      const dpr = window.devicePixelRatio || 1;
      for (const node of [img, canvas]) {
        node.style.width = `${w * scale}px`;
        node.style.height = `${h * scale}px`;
      }
      canvas.width = Math.round(w * scale * dpr);
      canvas.height = Math.round(h * scale * dpr);
      const ctx = canvas.getContext("2d");
      ctx.scale(dpr, dpr);
      draw(ctx, scale, w, h);
      figure.dataset.drawn = "true";
    }, { once: true });
    return figure;
  }

  /** A label on a coloured ground at (x, y - 16), moved down below the labels already `placed` it would cover. */
  function tag(ctx, text, x, y, colour, width, placed = []) {
    ctx.font = "600 12px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8;
    const left = Math.max(0, Math.min(x, width - w));
    let top = Math.max(0, y - 16);
    const covers = (r) => left < r.left + r.w && r.left < left + w && top < r.top + 16 && r.top < top + 16;
    for (let tries = 0; tries < 20 && placed.some(covers); tries++) top += 16;
    placed.push({ left, top, w });
    ctx.fillStyle = colour;
    ctx.fillRect(left, top, w, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, left + 4, top + 12);
  }

  function objectsView(entry, url) {
    const objects = entry.objects;
    const colour = (i) => PALETTE[i % PALETTE.length];
    const legend = el("ul", { class: "legend", "data-testid": "objects" }, objects.length
      ? objects.map((o, i) => el("li", { "data-testid": "object" },
        el("span", { class: "swatch", style: `background: ${colour(i)}` }),
        el("span", { class: "object-label", text: o.label }),
        el("span", { class: "muted", text: ` ${percent(o.score)}${o.mask ? "" : " · no mask"}` })))
      : el("li", { class: "muted", text: "no object scored above the threshold" }));
    if (!url) return legend;
    const label = `${objects.length} object${objects.length === 1 ? "" : "s"} drawn over the image`;
    const figure = overlaid(url, entry, 420, label, (ctx, scale, w) => {
      objects.forEach((o, i) => {
        if (!o.mask) return;
        const [mh, mw] = o.mask.size;
        const mask = decodeRLE(o.mask);
        const layer = document.createElement("canvas");
        layer.width = mw;
        layer.height = mh;
        const pixels = layer.getContext("2d").createImageData(mw, mh);
        const n = parseInt(colour(i).slice(1), 16);
        for (let p = 0; p < mask.length; p++) {
          if (!mask[p]) continue;
          pixels.data.set([(n >> 16) & 255, (n >> 8) & 255, n & 255, 115], 4 * p);
        }
        layer.getContext("2d").putImageData(pixels, 0, 0);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(layer, 0, 0, mw * scale, mh * scale);
      });
      objects.forEach((o, i) => {
        const [x1, y1, x2, y2] = o.box.map((v) => v * scale);
        ctx.strokeStyle = colour(i);
        ctx.lineWidth = 2;
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      });
      const placed = []; // labels last, the most likely object's first, so that none hides another
      objects.forEach((o, i) => tag(ctx, `${o.label} ${percent(o.score)}`, o.box[0] * scale, o.box[1] * scale,
        colour(i), w * scale, placed));
    });
    return el("div", { class: "split" }, figure, legend);
  }

  function polygonsView(entry, url) {
    const words = entry.words;
    const list = el("ol", { class: "words", "data-testid": "words" }, words.length
      ? words.map((w) => el("li", { "data-testid": "word" },
        el("span", { class: "word-text", text: w.text || "∅" }),
        el("span", { class: "muted", text: [w.confidence !== undefined ? `read ${percent(w.confidence)}` : "",
          w.detection_score !== undefined ? `found ${percent(w.detection_score)}` : ""].filter(Boolean).join(" · ") })))
      : el("li", { class: "muted", text: "no words found" }));
    if (!url) return list;
    const label = `${words.length} word${words.length === 1 ? "" : "s"} outlined over the image`;
    const figure = overlaid(url, entry, 420, label, (ctx, scale, w) => {
      words.forEach((word, i) => {
        const c = PALETTE[i % PALETTE.length];
        ctx.beginPath();
        word.polygon.forEach(([x, y], k) => (k ? ctx.lineTo(x * scale, y * scale) : ctx.moveTo(x * scale, y * scale)));
        ctx.closePath();
        ctx.fillStyle = rgb(c, 0.15);
        ctx.fill();
        ctx.strokeStyle = c;
        ctx.lineWidth = 2;
        ctx.stroke();
      });
      const placed = [];
      words.forEach((word, i) => {
        const [x, y] = word.polygon[0];
        tag(ctx, word.text || "∅", x * scale, Math.max(16, y * scale), PALETTE[i % PALETTE.length], w * scale, placed);
      });
    });
    return el("div", { class: "split" }, figure, list);
  }

  /** attention[target][source] with labels: a table, or a canvas when it is too wide for one. */
  function alignmentView(matrix, rows, columns) {
    // weights on their own scale (a row sums to 1): diffuse attention looks dim, a sharp one bright
    const wide = columns.length > 40;
    if (wide) {
      const cell = Math.max(2, Math.min(12, Math.floor(720 / columns.length)));
      const canvas = el("canvas", { width: columns.length * cell, height: matrix.length * 12, role: "img",
        class: "alignment", "data-testid": "attention-map", "aria-label": "attention: rows output, columns input" });
      const ctx = canvas.getContext("2d");
      matrix.forEach((row, i) => row.forEach((v, j) => {
        ctx.fillStyle = `rgb(${heat(v).join(",")})`;
        ctx.fillRect(j * cell, i * 12, cell, 12);
      }));
      return el("div", { class: "attention" }, el("h4", {}, "Attention ", scale()), canvas);
    }
    const table = el("table", { class: "alignment", "data-testid": "attention-map",
      "aria-label": "attention of each output piece (row) over the input pieces (columns)" },
      el("thead", {}, el("tr", {}, el("th", {}), columns.map((c) => el("th", { scope: "col", text: visibleChar(c) })))),
      el("tbody", {}, matrix.map((row, i) => el("tr", {},
        el("th", { scope: "row", text: visibleChar(rows[i] ?? "") }),
        row.map((v) => {
          const t = v;
          const [r, g, b] = heat(t);
          return el("td", { title: v.toFixed(3), style: `background: rgb(${r},${g},${b}); color: ${t > 0.6 ? "#111" : "#eee"}`,
            text: Math.round(100 * v) });
        })))));
    return el("div", { class: "attention" }, el("h4", {}, "Attention",
      el("span", { class: "muted", text: " of each output piece (row) over the input pieces (columns), in %" }), scale()),
    table);
  }

  /** The colour scale of the heat-maps, 0 to 100%. */
  function scale() {
    const stops = HEAT.map((c, i) => `rgb(${c.join(",")}) ${((100 * i) / (HEAT.length - 1)).toFixed(0)}%`);
    return el("span", { class: "scale", "aria-hidden": "true" }, "0 ",
      el("span", { class: "scale-bar", style: `background: linear-gradient(to right, ${stops.join(", ")})` }), " 100%");
  }

  /** One small image per word with its attention grid (h x w) over it. */
  function wordHeatmaps(entry, url) {
    const labels = Array.isArray(entry.words) ? entry.words : (entry.caption || "").split(/\s+/);
    const items = entry.attention.map((grid, i) => {
      const word = labels[i] ?? (i === labels.length ? "(end)" : "");
      const figure = overlaid(url, entry, 110, `attention of "${word}"`, (ctx, scale, w, h) => {
        const gh = grid.length;
        const gw = grid[0].length;
        const max = Math.max(1e-9, ...grid.flat());
        const min = Math.min(...grid.flat());
        const layer = document.createElement("canvas");
        layer.width = gw;
        layer.height = gh;
        const pixels = layer.getContext("2d").createImageData(gw, gh);
        grid.forEach((row, y) => row.forEach((v, x) => {
          const t = max > min ? (v - min) / (max - min) : 0.5;
          pixels.data.set([...heat(t), Math.round(60 + 150 * t)], 4 * (y * gw + x));
        }));
        layer.getContext("2d").putImageData(pixels, 0, 0);
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(layer, 0, 0, w * scale, h * scale);
      });
      return el("figure", { class: "heat", "data-testid": "word-heatmap" }, figure, el("figcaption", { text: word }));
    });
    return el("div", { class: "attention" }, el("h4", { text: "Where each word looked" }),
      el("div", { class: "heatmaps" }, items));
  }

  function details(entry) {
    const parts = DETAIL_FIELDS.filter((k) => typeof entry[k] === "number")
      .map((k) => `${k.replaceAll("_", " ")} ${number(entry[k])}`);
    return parts.length ? el("p", { class: "details muted", "data-testid": "details", text: parts.join(" · ") }) : null;
  }

  /** One result entry drawn from the fields it holds. `url`: the input image it is about, if any. */
  function renderEntry(entry, url) {
    const card = el("article", { class: "result", "data-testid": "result" });
    if (entry.input !== undefined) card.append(el("h3", { class: "result-input", text: entry.input }));
    if (entry.error) {
      card.append(el("p", { class: "error", role: "alert", text: entry.error }));
      return card;
    }
    for (const field of TEXT_FIELDS) {
      if (typeof entry[field] === "string") {
        card.append(el("p", { class: "output-text", "data-testid": field, text: entry[field] || "(nothing)" }));
        break;
      }
    }
    const pictured = url && entry.width && entry.height;
    if (Array.isArray(entry.predictions)) {
      card.append(el("div", { class: "split" }, url ? el("img", { class: "thumb", src: url, alt: entry.input }) : null,
        bars(entry.predictions, (p) => p.label)));
    }
    if (Array.isArray(entry.next)) card.append(bars(entry.next, (p) => `“${visibleChar(p.char)}”`));
    if (Array.isArray(entry.objects)) card.append(objectsView(entry, pictured ? url : null));
    if (Array.isArray(entry.words) && entry.words.length && entry.words.every((w) => w && w.polygon)) {
      card.append(polygonsView(entry, pictured ? url : null));
    } else if (Array.isArray(entry.words) && !entry.words.length && "text" in entry) {
      card.append(polygonsView(entry, pictured ? url : null));
    }
    if (Array.isArray(entry.attention) && entry.attention.length) {
      const rows = entry.target_pieces || entry.characters;
      const is3d = Array.isArray(entry.attention[0]?.[0]);
      if (is3d && url) card.append(wordHeatmaps(entry, url));
      else if (!is3d) {
        const columns = entry.source_pieces || entry.attention[0].map((_, j) => String(j));
        card.append(alignmentView(entry.attention, rows || [], columns));
      }
    }
    const more = details(entry);
    if (more) card.append(more);
    return card;
  }

  function renderAnswer(answer, urls) {
    const entries = Array.isArray(answer.results) ? answer.results : [answer];
    const view = el("div", { class: "answer" }, entries.map((e, i) => renderEntry(e, urls[i])));
    view.append(el("details", { class: "raw" }, el("summary", { text: "The answer as JSON" }),
      el("pre", { text: JSON.stringify(answer, null, 1).slice(0, 200000) })));
    return view;
  }

  // ----- a run's panel ---------------------------------------------------------------------------
  /** The verb shown first: the task's own verb rather than the generic `predict`. */
  function defaultVerb(run) {
    return run.verbs.find((v) => v.name !== "predict") || run.verbs[0];
  }

  function headline(run) {
    if (run.headline) return run.headline; // the task's own one-line summary, e.g. "test accuracy 92.76%"
    for (const split of ["test", "val"]) {
      const metrics = run.metrics?.[split] || {};
      const key = Object.keys(metrics).find((k) => k !== "loss" && k !== "n" && typeof metrics[k] === "number");
      if (key) return `${split} ${key.replaceAll("_", " ")} ${number(metrics[key])}`;
      if (typeof metrics.loss === "number") return `${split} loss ${number(metrics.loss)}`;
    }
    return run.status || "";
  }

  function verbPanel(run, verb, limits) {
    const widget = verb.input ? INPUTS[verb.input.kind]?.(verb.input.name) : null;
    const form = optionsForm(verb.options, limits);
    const status = el("p", { class: "status", role: "status", "data-testid": "status" });
    const alert = el("div", { class: "error", role: "alert", "data-testid": "error", hidden: true });
    const results = el("section", { class: "results", "data-testid": "results", "aria-live": "polite",
      "aria-label": "Results" });
    const button = el("button", { type: "submit", class: "go", "data-testid": "go", text: capital(verb.name) });
    const showError = (message) => {
      alert.textContent = message;
      alert.hidden = false;
    };

    const node = el("form", { class: "verb", novalidate: true, "data-verb": verb.name },
      verb.help ? el("p", { class: "help", text: capital(verb.help) }) : null,
      verb.input && !widget ? el("p", { class: "muted", text: `(no widget for ${verb.input.kind} inputs)` }) : null,
      widget?.node, form.node, el("div", { class: "actions" }, button, status), alert, results);
    node.addEventListener("lamina-error", (e) => showError(e.detail));
    node.addEventListener("submit", async (e) => {
      e.preventDefault();
      alert.hidden = true;
      if (widget && widget.empty()) {
        showError(`Give ${verb.input.kind === "text" ? "a text" : `an ${verb.input.kind} file`} first.`);
        return;
      }
      const items = widget ? await widget.items() : [];
      const urls = items.map((f) => (f instanceof Blob && verb.input.kind === "image" ? URL.createObjectURL(f) : null));
      button.disabled = true;
      node.setAttribute("aria-busy", "true");
      status.textContent = "Working…";
      const started = performance.now();
      let stream = null;
      if (verb.stream) {
        stream = el("pre", { class: "stream", "data-testid": "stream", dataset: { pieces: 0, done: "false" } },
          el("span", { class: "prompt" }), el("span", { class: "generated", "data-testid": "generated" }));
        results.replaceChildren(el("article", { class: "result" }, stream));
      } else {
        results.replaceChildren();
      }
      try {
        const answer = await call(verb, items, form.values(), (text, n) => {
          stream.querySelector(".generated").append(text);
          stream.dataset.pieces = Number(stream.dataset.pieces) + n;
          status.textContent = `Generating… ${stream.dataset.pieces} pieces`;
        });
        const seconds = ((performance.now() - started) / 1000).toFixed(2);
        status.textContent = `Done in ${seconds} s`;
        if (stream) {
          stream.dataset.done = "true";
          if (typeof answer.prompt === "string" && typeof answer.text === "string") {
            stream.querySelector(".prompt").textContent = answer.prompt; // the pieces began with the prompt
            stream.querySelector(".generated").textContent = answer.text;
          }
          const more = details(answer);
          if (more) stream.after(more);
          results.append(renderAnswer(answer, []).querySelector(".raw"));
        } else {
          results.replaceChildren(renderAnswer(answer, urls));
        }
      } catch (err) {
        status.textContent = "";
        showError(err.message || String(err));
      } finally {
        button.disabled = false;
        node.removeAttribute("aria-busy");
      }
    });
    return node;
  }

  function runPanel(run, limits) {
    const id = `panel-${run.name}`;
    const body = el("div", { class: "verb-body" });
    const show = (verb) => body.replaceChildren(verbPanel(run, verb, limits));
    const first = defaultVerb(run);
    let chooser = null;
    if (run.verbs.length > 1) {
      chooser = el("div", { class: "verbs", role: "radiogroup", "aria-label": "Verb", "data-testid": "verbs" },
        run.verbs.map((v) => {
          const vid = `${id}-verb-${v.name}`;
          const radio = el("input", { type: "radio", name: `${id}-verb`, id: vid, value: v.name,
            checked: v === first, onchange: () => show(v) });
          return el("span", { class: "verb-choice" }, radio, el("label", { for: vid, text: v.name }));
        }));
    }
    show(first);
    const params = run.parameters ? `${(run.parameters / 1e6).toFixed(run.parameters < 1e5 ? 3 : 2)} M parameters` : "";
    return el("section", { class: "panel", id, role: "tabpanel", "aria-labelledby": `tab-${run.name}`,
      "data-testid": `panel-${run.name}`, hidden: true },
    el("div", { class: "panel-head" },
      el("h2", {}, run.name, el("span", { class: "muted", text: ` ${run.task} · ${run.model}` })),
      el("p", { class: "muted", text: [params, headline(run), run.status].filter(Boolean).join(" · ") }),
      chooser),
    body);
  }

  // ----- the page --------------------------------------------------------------------------------
  async function start() {
    const tabs = document.querySelector(".tabs");
    const panels = document.getElementById("panels");
    const pageError = document.querySelector(".page-error");
    let listing;
    try {
      const response = await fetch("/runs");
      if (!response.ok) throw new Error(await refusalOf(response));
      listing = await response.json();
    } catch (err) {
      pageError.textContent = `Could not list the served runs: ${err.message || err}`;
      pageError.hidden = false;
      panels.replaceChildren();
      return;
    }
    const built = new Map();
    const select = (run) => {
      for (const tab of tabs.children) {
        const on = tab.dataset.run === run.name;
        tab.setAttribute("aria-selected", String(on));
        tab.tabIndex = on ? 0 : -1;
      }
      if (!built.has(run.name)) {
        const panel = runPanel(run, listing.limits);
        built.set(run.name, panel);
        panels.append(panel);
      }
      for (const [name, panel] of built) panel.hidden = name !== run.name;
      if (location.hash !== `#${run.name}`) history.replaceState(null, "", `#${run.name}`);
    };
    panels.replaceChildren();
    if (!listing.runs.length) {
      panels.append(el("p", { class: "muted", text: "No runs are served." }));
      return;
    }
    listing.runs.forEach((run) => {
      tabs.append(el("button", { type: "button", role: "tab", id: `tab-${run.name}`, "aria-controls": `panel-${run.name}`,
        "aria-selected": "false", "data-run": run.name, "data-testid": `tab-${run.name}`, onclick: () => select(run) },
      el("span", { class: "tab-name", text: run.name }),
      el("span", { class: "tab-meta", text: `${run.task} · ${run.model}` }),
      el("span", { class: "tab-metric", text: headline(run) })));
    });
    tabs.addEventListener("keydown", (e) => {
      const all = [...tabs.children];
      const i = all.indexOf(document.activeElement);
      if (i < 0 || !["ArrowRight", "ArrowLeft"].includes(e.key)) return;
      const next = all[(i + (e.key === "ArrowRight" ? 1 : all.length - 1)) % all.length];
      next.focus();
      next.click();
    });
    const wanted = listing.runs.find((r) => `#${r.name}` === location.hash) || listing.runs[0];
    select(wanted);
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", start);
  return { decodeRLE, encodeWAV, heat };
})();

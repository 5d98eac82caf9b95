// The page of `edsr serve`: plain JavaScript, no build step, talking to the same server's API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    models: [],
    limits: null,
    file: null,
    busy: false,
    xhr: null,
    pollTimer: null,
    cancelled: false,
    urls: [],
    // viewer
    natW: 0,
    natH: 0,
    zoom: "fit",
    z: 1,
    panX: 0,
    panY: 0,
    split: 0.5,
  };

  // ------------------------------------------------------------------ helpers

  function formatBytes(n) {
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
    if (n >= 1024) return (n / 1024).toFixed(0) + " KB";
    return n + " B";
  }

  function formatCount(n) {
    return n.toLocaleString("en-US");
  }

  function jobId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = !message;
  }

  function setProgress(fraction, text) {
    const fill = $("bar-fill");
    const bar = fill.parentElement;
    if (fraction === null) {
      fill.classList.add("indeterminate");
      bar.removeAttribute("aria-valuenow");
    } else {
      fill.classList.remove("indeterminate");
      const pct = Math.max(0, Math.min(100, fraction * 100));
      fill.style.width = pct.toFixed(1) + "%";
      bar.setAttribute("aria-valuenow", pct.toFixed(0));
    }
    $("status").textContent = text;
  }

  function keepUrl(url) {
    state.urls.push(url);
    return url;
  }

  function releaseUrls() {
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.urls = [];
  }

  // ------------------------------------------------------------------ models and options

  async function loadModels() {
    let data;
    try {
      const r = await fetch("/v1/models", { cache: "no-store" });
      data = await r.json();
      if (!r.ok) throw new Error(data.error || r.statusText);
    } catch (e) {
      showError("Cannot load the list of models from the server: " + e.message);
      return;
    }
    state.limits = data.limits;
    state.models = data.models.filter((m) => m.loaded && m.id !== "bicubic");
    const sel = $("model");
    sel.textContent = "";
    for (const m of state.models) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.id + (m.description ? " \u2014 " + m.description : "");
      if (m.id === data.default) o.selected = true;
      sel.appendChild(o);
    }
    $("limit-mb").textContent = formatBytes(state.limits.max_upload_bytes);
    $("limit-px").textContent = formatCount(state.limits.max_pixels);
    updateScales();
  }

  function currentModel() {
    return state.models.find((m) => m.id === $("model").value);
  }

  function updateScales() {
    const m = currentModel();
    const sel = $("scale");
    const previous = sel.value;
    sel.textContent = "";
    for (const s of m ? m.scales : []) {
      const o = document.createElement("option");
      o.value = String(s);
      o.textContent = "\u00d7" + s;
      sel.appendChild(o);
    }
    if ([...sel.options].some((o) => o.value === previous)) sel.value = previous;
    else if (m && m.default_scale) sel.value = String(m.default_scale);  // the CLI's default
    updateModelInfo();
  }

  function updateModelInfo() {
    const m = currentModel();
    const scale = Number($("scale").value);
    let text = "";
    if (m) {
      const rows = (m.psnr || []).filter((p) => p.scale === scale && !p.self_ensemble);
      if (rows.length) {
        text = "PSNR \u00d7" + scale + ": " + rows
          .map((p) => `${p.dataset} ${p.psnr.toFixed(2)} dB (${p.kind})`)
          .join(", ");
      } else {
        text = "No PSNR on record for this model at \u00d7" + scale + ".";
      }
      if (m.parameters) text += " \u00b7 " + (m.parameters / 1e6).toFixed(2) + "M parameters";
    }
    $("model-info").textContent = text;
    updateButton();
  }

  function updateButton() {
    $("go").disabled = state.busy || !state.file || !currentModel();
  }

  // ------------------------------------------------------------------ choosing a file

  async function setFile(file) {
    showError("");
    if (!file) return;
    const limits = state.limits;
    if (limits && file.size > limits.max_upload_bytes) {
      showError(`${file.name} is ${formatBytes(file.size)}; this server accepts up to ${formatBytes(limits.max_upload_bytes)}.`);
      return;
    }
    state.file = file;
    $("drop-empty").hidden = true;
    $("file-info").hidden = false;
    $("file-name").textContent = file.name;
    $("file-dims").textContent = formatBytes(file.size);
    const url = URL.createObjectURL(file);
    const thumb = $("thumb");
    thumb.hidden = false;
    thumb.onerror = () => { thumb.hidden = true; };  // e.g. TIFF, which browsers do not show
    thumb.onload = () => {
      const w = thumb.naturalWidth;
      const h = thumb.naturalHeight;
      $("file-dims").textContent = `${w} \u00d7 ${h} pixels \u00b7 ${formatBytes(file.size)}`;
      if (limits && w * h > limits.max_pixels) {
        showError(`The image has ${formatCount(w * h)} pixels; this server accepts up to ${formatCount(limits.max_pixels)}.`);
        state.file = null;
        updateButton();
      }
    };
    if (thumb.dataset.url) URL.revokeObjectURL(thumb.dataset.url);
    thumb.dataset.url = url;
    thumb.src = url;
    updateButton();
  }

  function setupDrop() {
    const drop = $("drop");
    const input = $("file");
    const open = () => { if (!state.busy) input.click(); };
    drop.addEventListener("click", (e) => {
      if (!e.target.closest("button")) open();
    });
    drop.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
    });
    $("pick").addEventListener("click", (e) => { e.stopPropagation(); open(); });
    $("change").addEventListener("click", (e) => { e.stopPropagation(); open(); });
    input.addEventListener("change", () => {
      if (input.files.length) setFile(input.files[0]);
      input.value = "";
    });
    // A file dropped anywhere on the page is taken, rather than opened by the browser.
    for (const type of ["dragenter", "dragover"]) {
      document.addEventListener(type, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const type of ["dragleave", "dragend"]) {
      document.addEventListener(type, (e) => {
        if (e.target === document.documentElement || e.target === drop) drop.classList.remove("over");
      });
    }
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (state.busy) return;
      const files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) setFile(files[0]);
    });
  }

  // ------------------------------------------------------------------ the request

  function post(fields, onUpload) {
    // XMLHttpRequest, not fetch: it reports upload and download progress.
    return new Promise((resolve, reject) => {
      const form = new FormData();
      for (const [k, v] of Object.entries(fields)) form.append(k, v);
      const xhr = new XMLHttpRequest();
      state.xhr = xhr;
      xhr.open("POST", "/v1/upscale");
      xhr.responseType = "blob";
      if (onUpload) {
        xhr.upload.onprogress = (e) => { if (e.lengthComputable) onUpload(e.loaded / e.total, false); };
        xhr.upload.onload = () => onUpload(1, true);
      }
      xhr.onprogress = (e) => {
        if (e.lengthComputable && fields.job) setProgress(e.loaded / e.total, "Downloading the result\u2026");
      };
      xhr.onload = async () => {
        state.xhr = null;
        if (xhr.status === 200) {
          resolve({ blob: xhr.response, xhr });
          return;
        }
        let message = `The server answered ${xhr.status}.`;
        try {
          message = JSON.parse(await xhr.response.text()).error || message;
        } catch (_) { /* not JSON */ }
        const err = new Error(message);
        err.status = xhr.status;
        if (xhr.status === 503) {
          const retry = xhr.getResponseHeader("Retry-After");
          err.retryAfter = Number(retry) || 1;
          if (retry) err.message += ` (retry in about ${retry} s)`;
        }
        reject(err);
      };
      xhr.onerror = () => { state.xhr = null; reject(new Error("Cannot reach the server.")); };
      xhr.onabort = () => { state.xhr = null; reject(new Error("Cancelled.")); };
      xhr.send(form);
    });
  }

  function startPolling(id) {
    stopPolling();
    state.pollTimer = setInterval(async () => {
      try {
        const r = await fetch("/v1/progress/" + encodeURIComponent(id), { cache: "no-store" });
        if (!r.ok || !state.pollTimer) return;
        const p = await r.json();
        if (!state.pollTimer) return;
        if (p.state === "queued") {
          setProgress(null, `Waiting for a free worker (position ${p.position || 1})\u2026`);
        } else if (p.state === "running" && p.total > 0) {
          setProgress(p.done / p.total, `Upscaling: ${p.done} of ${p.total} ${$("ensemble").checked ? "passes" : "tiles"}\u2026`);
        } else if (p.state === "running") {
          setProgress(null, "Upscaling\u2026");
        } else if (p.state === "encoding") {
          setProgress(1, "Encoding the result\u2026");
        }
      } catch (_) { /* the next poll will tell */ }
    }, 300);
  }

  function stopPolling() {
    if (state.pollTimer) clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("progress").hidden = !busy;
    for (const id of ["model", "scale", "format", "ensemble"]) $(id).disabled = busy;
    updateButton();
  }

  async function run(e) {
    e.preventDefault();
    if (state.busy || !state.file) return;
    showError("");
    state.cancelled = false;
    setBusy(true);
    const file = state.file;
    const model = currentModel();
    const scale = $("scale").value;
    const format = $("format").value;
    const ensemble = $("ensemble").checked;
    const id = jobId();
    const t0 = performance.now();
    try {
      setProgress(0, "Uploading\u2026");
      const main = await post(
        { model: model.id, scale, format, ensemble: String(ensemble), job: id, image: file },
        (f, done) => {
          if (done) {
            setProgress(null, "Waiting for the server\u2026");
            startPolling(id);
          } else {
            setProgress(f, `Uploading: ${Math.round(f * 100)}%`);
          }
        },
      );
      stopPolling();
      setProgress(null, "Making the bicubic image for comparison\u2026");
      const baseBlob = await bicubic(file, scale);
      const seconds = (performance.now() - t0) / 1000;
      await showResult(file, model, scale, format, main, baseBlob, seconds);
    } catch (err) {
      showError(err.message);
    } finally {
      stopPolling();
      setBusy(false);
    }
  }

  // The comparison image. The model's result is already here, so a busy server (503) is
  // waited for a few times rather than shown as a failure.
  async function bicubic(file, scale) {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await post({ model: "bicubic", scale, format: "png", image: file })).blob;
      } catch (err) {
        if (err.status !== 503 || attempt >= 4 || state.cancelled) throw err;
        setProgress(null, "The server is busy; waiting to make the comparison image\u2026");
        await new Promise((r) => setTimeout(r, Math.min(5, err.retryAfter) * 1000));
        if (state.cancelled) throw new Error("Cancelled.");
      }
    }
  }

  function cancel() {
    state.cancelled = true;
    if (state.xhr) state.xhr.abort();
  }

  // ------------------------------------------------------------------ result and comparison viewer

  function filenameFrom(xhr, fallback) {
    const cd = xhr.getResponseHeader("Content-Disposition") || "";
    const m = /filename\*=utf-8''([^;]+)/i.exec(cd) || /filename="?([^";]+)"?/i.exec(cd);
    return m ? decodeURIComponent(m[1]) : fallback;
  }

  async function showResult(file, model, scale, format, main, baseBlob, seconds) {
    releaseUrls();
    const afterUrl = keepUrl(URL.createObjectURL(main.blob));
    const beforeUrl = keepUrl(URL.createObjectURL(baseBlob));
    const before = $("before");
    const after = $("after");
    before.src = beforeUrl;
    after.src = afterUrl;
    await Promise.all([before.decode(), after.decode()]);
    state.natW = after.naturalWidth;
    state.natH = after.naturalHeight;
    const name = filenameFrom(main.xhr, `upscaled_x${scale}.${format === "jpeg" ? "jpg" : format}`);
    const link = $("download");
    link.href = afterUrl;
    link.download = name;
    link.textContent = `Download ${format.toUpperCase()} (${formatBytes(main.blob.size)})`;
    $("after-tag").textContent = model.id;
    $("after-corner").textContent = model.id;
    const inW = Math.round(state.natW / scale);
    const inH = Math.round(state.natH / scale);
    $("result-info").textContent =
      `${file.name}: ${inW} \u00d7 ${inH} \u2192 ${state.natW} \u00d7 ${state.natH} pixels, ` +
      `${model.id} \u00d7${scale}${$("ensemble").checked ? " with self-ensemble" : ""}, ` +
      `${formatBytes(main.blob.size)}, ${seconds.toFixed(1)} s`;
    $("result").hidden = false;
    $("result").dataset.width = String(state.natW);
    $("result").dataset.height = String(state.natH);
    state.split = 0.5;
    $("split").value = "500";
    setZoom("fit");
    $("result").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function fitZoom() {
    const v = $("viewer");
    if (!state.natW) return 1;
    return Math.min(v.clientWidth / state.natW, v.clientHeight / state.natH);
  }

  function clampPan() {
    const v = $("viewer");
    const w = state.natW * state.z;
    const h = state.natH * state.z;
    state.panX = w <= v.clientWidth ? (v.clientWidth - w) / 2 : Math.min(0, Math.max(v.clientWidth - w, state.panX));
    state.panY = h <= v.clientHeight ? (v.clientHeight - h) / 2 : Math.min(0, Math.max(v.clientHeight - h, state.panY));
  }

  function layout() {
    if (!state.natW) return;
    clampPan();
    const v = $("viewer");
    const stage = $("stage");
    stage.style.width = state.natW * state.z + "px";
    stage.style.height = state.natH * state.z + "px";
    stage.style.transform = `translate(${state.panX}px, ${state.panY}px)`;
    // Show real pixels when zoomed in: smoothing would hide exactly what is being compared.
    stage.classList.toggle("pixelated", state.z >= 2);
    const x = state.split * v.clientWidth;
    $("divider").style.left = x + "px";
    const inset = Math.max(0, x - state.panX);
    $("after").style.clipPath = `inset(0 0 0 ${inset}px)`;
    $("zoom-level").textContent = Math.round(state.z * 100) + "%";
  }

  // Zoom to ``z`` keeping the image point under viewer position (cx, cy) where it is.
  function zoomTo(z, cx, cy) {
    const v = $("viewer");
    if (cx === undefined) { cx = v.clientWidth / 2; cy = v.clientHeight / 2; }
    z = Math.max(Math.min(fitZoom(), 1) * 0.5, Math.min(32, z));
    const ix = (cx - state.panX) / state.z;
    const iy = (cy - state.panY) / state.z;
    state.z = z;
    state.panX = cx - ix * z;
    state.panY = cy - iy * z;
    layout();
  }

  function setZoom(value) {
    state.zoom = value;
    $("zoom").value = value;
    if (value === "fit") {
      state.z = fitZoom();
      layout();
    } else {
      zoomTo(Number(value));
    }
  }

  function setupViewer() {
    const v = $("viewer");
    const divider = $("divider");
    let drag = null;
    $("zoom").addEventListener("change", () => setZoom($("zoom").value));
    $("split").addEventListener("input", () => {
      state.split = Number($("split").value) / 1000;
      layout();
    });
    v.addEventListener("pointerdown", (e) => {
      if (!state.natW) return;
      v.setPointerCapture(e.pointerId);
      const onDivider = e.target === divider || divider.contains(e.target);
      drag = { mode: onDivider ? "split" : "pan", x: e.clientX, y: e.clientY, panX: state.panX, panY: state.panY };
      if (!onDivider) v.classList.add("panning");
    });
    v.addEventListener("pointermove", (e) => {
      if (!drag) return;
      if (drag.mode === "split") {
        const r = v.getBoundingClientRect();
        state.split = Math.max(0, Math.min(1, (e.clientX - r.left) / r.width));
        $("split").value = String(Math.round(state.split * 1000));
      } else {
        state.panX = drag.panX + e.clientX - drag.x;
        state.panY = drag.panY + e.clientY - drag.y;
      }
      layout();
    });
    const end = () => { drag = null; v.classList.remove("panning"); };
    v.addEventListener("pointerup", end);
    v.addEventListener("pointercancel", end);
    v.addEventListener("wheel", (e) => {
      if (!state.natW) return;
      e.preventDefault();
      const r = v.getBoundingClientRect();
      state.zoom = "custom";
      $("zoom").value = "custom";
      zoomTo(state.z * Math.pow(1.0015, -e.deltaY), e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    v.addEventListener("keydown", (e) => {
      const step = e.shiftKey ? 0.1 : 0.02;
      if (e.key === "ArrowLeft") state.split = Math.max(0, state.split - step);
      else if (e.key === "ArrowRight") state.split = Math.min(1, state.split + step);
      else if (e.key === "+" || e.key === "=") { zoomTo(state.z * 1.25); return; }
      else if (e.key === "-") { zoomTo(state.z / 1.25); return; }
      else if (e.key === "0") { setZoom("fit"); return; }
      else return;
      e.preventDefault();
      $("split").value = String(Math.round(state.split * 1000));
      layout();
    });
    new ResizeObserver(() => {
      if (state.zoom === "fit") state.z = fitZoom();
      layout();
    }).observe(v);
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    setupDrop();
    setupViewer();
    $("model").addEventListener("change", updateScales);
    $("scale").addEventListener("change", updateModelInfo);
    $("options").addEventListener("submit", run);
    $("cancel").addEventListener("click", cancel);
    loadModels();
  });
})();

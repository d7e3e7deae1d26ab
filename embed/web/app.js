// The page: open a bundle (served beside the page, or a folder the user picks), score dropped images, show their
// reconstructions, generate from the prior. The scoring itself is edgevae-core.js, shared with the Node program.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

import { decodePNG, defectLogits, defectProbabilities, generate, implemented, isOutlier, openBundle, preprocess, pValue,
  rawPublicKey, readPNM, scoreImage, scoreTiled, tiledDefectMap, tiledIsOutlier, tiledPValue } from "./edgevae-core.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // no SharedArrayBuffer needed: the page works from any static server

const $ = (id) => document.getElementById(id);
let source = null; // readFile(name) of the current bundle
let bundle = null;
let trustedKeys = []; // raw Ed25519 public keys: when any are set, only bundles they signed load

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function verifyEd25519(raw, signature, payload) {
  const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, signature, payload);
}

async function open(readFile, method) {
  setStatus("loading…");
  try {
    bundle = await openBundle(ort, readFile, sha256Hex, { method, sessionOptions: { executionProviders: ["wasm"] },
      trustedKeys, verifyEd25519 });
  } catch (err) {
    bundle = null;
    $("generate").disabled = true;
    setStatus(`bundle refused: ${err.message}`, true);
    return;
  }
  source = readFile;
  const calibrated = Object.keys(bundle.specs).filter((m) => implemented(bundle.specs, m) && bundle.manifest.calibration.methods[m]);
  $("method").replaceChildren(...calibrated.map((m) => new Option(m, m, false, m === bundle.method)));
  $("generate").disabled = false;
  const { channels, height, width, tiling } = bundle;
  const threshold = tiling ? `image-level threshold ${tiling.threshold.toPrecision(4)} (FPR ${tiling.fpr}); images of any size `
    + `at least ${height}x${width} are scored by tiles every ${tiling.stride} px`
    : `threshold ${bundle.calibration.threshold.toPrecision(4)} (FPR ${bundle.manifest.calibration.fpr})`;
  setStatus(`bundle loaded${trustedKeys.length ? " (signature verified)" : ""}: ${channels}x${height}x${width}${tiling ? " tiles" : ""}, `
    + `method ${bundle.method}, ${threshold}`);
  document.body.dataset.bundle = "loaded";
}

async function fetchBytes(name) {
  const response = await fetch(new URL(`bundle/${name}`, document.baseURI));
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

function folderReader(files) {
  const byName = new Map(Array.from(files, (f) => [f.name, f]));
  return async (name) => {
    const file = byName.get(name);
    if (!file) throw new Error("not in the picked folder");
    return new Uint8Array(await file.arrayBuffer());
  };
}

// An image file as float32 CHW: { x, height, width } (a tiled bundle takes any size at least one tile).
async function decodeImage(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (/\.(pgm|ppm|pnm)$/i.test(file.name)) {
    const { pixels, width, height, stride } = readPNM(bytes);
    return { x: preprocess(bundle, pixels, width, height, stride), height, width };
  }
  if (/\.png$/i.test(file.name)) { // decoded as Pillow does, not by the browser (which premultiplies alpha)
    const { pixels, width, height, stride } = await decodePNG(bytes, { expect: bundle.tiling ? null : bundle });
    return { x: preprocess(bundle, pixels, width, height, stride), height, width };
  }
  // other formats: no colour management, so pixel values reach the model as they are in the file
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return { x: preprocess(bundle, context.getImageData(0, 0, bitmap.width, bitmap.height).data, bitmap.width, bitmap.height, 4),
    height: bitmap.height, width: bitmap.width };
}

function draw(x, offset = 0, h = bundle.height, w = bundle.width) {
  const { channels } = bundle, canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "img";
  const context = canvas.getContext("2d"), image = context.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    for (let c = 0; c < 3; c++) {
      image.data[4 * i + c] = Math.round(255 * Math.min(1, Math.max(0, x[offset + (channels === 3 ? c * h * w : 0) + i])));
    }
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// A map of values in [0, 1] (H*W) as a heat map: black through red to yellow (the CLI's --maps colours).
function drawHeat(values, h = bundle.height, w = bundle.width) {
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "img";
  const context = canvas.getContext("2d"), image = context.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = Math.min(1, Math.max(0, values[i]));
    image.data[4 * i] = Math.round(255 * Math.min(1, 3 * v));
    image.data[4 * i + 1] = Math.round(255 * Math.min(1, Math.max(0, 3 * v - 1)));
    image.data[4 * i + 2] = Math.round(255 * Math.min(1, Math.max(0, 3 * v - 2)));
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function cell(row, content, className = "") {
  const td = row.insertCell();
  if (content instanceof Node) td.append(content); else td.textContent = content;
  if (className) td.className = className;
  return td;
}

async function scoreFiles(files) {
  if (!bundle) { setStatus("load a bundle first", true); return; }
  const body = $("results").tBodies[0];
  let flagged = 0, scored = 0;
  for (const file of files) {
    const row = body.insertRow();
    row.dataset.item = file.name;
    try {
      const { x, height, width } = await decodeImage(file);
      const started = performance.now();
      let score, reconstruction = null, p, outlier, tiles = 1;
      if (bundle.tiling) { // by tiles, against whole calibration images; no single reconstruction to show
        ({ score, tiles } = await scoreTiled(bundle, x, height, width));
        p = tiledPValue(bundle, score, tiles);
        outlier = tiledIsOutlier(bundle, score, tiles);
      } else {
        ({ score, reconstruction } = await scoreImage(bundle, x));
        p = pValue(bundle, score);
        outlier = isOutlier(bundle, score);
      }
      const ms = performance.now() - started;
      Object.assign(row.dataset, { score, pValue: p, outlier, ms, tiles });
      row.className = outlier ? "outlier" : "";
      cell(row, draw(x, 0, height, width));
      cell(row, reconstruction ? draw(reconstruction) : "—");
      const defect = !bundle.defect ? null
        : bundle.tiling ? await tiledDefectMap(bundle, x, height, width) : defectProbabilities(await defectLogits(bundle, x));
      cell(row, defect ? drawHeat(defect, height, width) : "—");
      cell(row, file.name);
      cell(row, score.toPrecision(6), "num");
      cell(row, p.toPrecision(3), "num");
      cell(row, outlier ? "OUTLIER" : "–", outlier ? "flag" : "");
      cell(row, ms.toFixed(1), "num");
      flagged += outlier; scored++;
    } catch (err) {
      row.dataset.error = err.message;
      cell(row, ""); cell(row, ""); cell(row, ""); cell(row, file.name); cell(row, `error: ${err.message}`).colSpan = 4;
    }
  }
  $("results").hidden = false;
  $("summary").textContent = `${body.rows.length} image(s); last batch: ${scored} scored, ${flagged} outlier(s)`;
  document.body.dataset.scored = String(body.rows.length);
}

$("load-demo").addEventListener("click", () => open(fetchBytes, null));
$("trusted-key").addEventListener("change", async (e) => {
  try {
    trustedKeys = await Promise.all(Array.from(e.target.files, async (f) => rawPublicKey(await f.text())));
    setStatus(`${trustedKeys.length} trusted key(s): only bundles they signed will load`);
  } catch (err) {
    trustedKeys = [];
    setStatus(`trusted key refused: ${err.message}`, true);
  }
  document.body.dataset.keys = String(trustedKeys.length);
});
$("bundle-folder").addEventListener("change", (e) => open(folderReader(e.target.files), null));
$("method").addEventListener("change", (e) => source && open(source, e.target.value));
$("images").addEventListener("change", (e) => scoreFiles(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); scoreFiles(e.dataTransfer.files); });
$("generate").addEventListener("click", async () => {
  const n = 16, images = await generate(bundle, n), size = bundle.channels * bundle.height * bundle.width;
  $("samples").replaceChildren(...Array.from({ length: n }, (_, i) => draw(images, i * size)));
  document.body.dataset.generated = String(n);
});
if (new URLSearchParams(location.search).has("demo")) open(fetchBytes, new URLSearchParams(location.search).get("method"));

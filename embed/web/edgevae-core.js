// edgevae's scorer in JavaScript, shared by the Node.js program (onnxruntime-node) and the web page
// (onnxruntime-web): open a bundle, verify it, apply its input contract, compute the scores and p-values exactly as
// edgevae.runtime does. Everything comes from the bundle: contract, calibration, what each method needs
// (scoring.method_specs: its kind, graphs, samples, noise file, map, parts), the anomaly-map statistics and the
// combined score's references, and the defect head's graph. The only per-method code here is the maths of the
// reconstruction scores and of the defect score.
// `ort` is the onnxruntime module of the host; `readFile(name)` returns a bundle file's bytes (Uint8Array);
// `sha256Hex(bytes)` returns a promise of the lower-case hex digest.

// The reconstruction scores' maths (the twins of the registry's numpy functions): f(bundle, x, mean, sq, energy).
const RECONSTRUCTION = {
  recon: (bundle, x, mean, sq) => sq,
  rel_recon: (bundle, x, mean, sq, energy) => sq / energy,
  smooth_recon: (bundle, x, mean) => smoothedEnergy(bundle, x, mean),
  local: (bundle, x, mean) => localScore(bundle, x, mean),
};

// What each method needs, from the bundle (scoring.method_specs); bundles exported before it carried them get the
// same entries from their older fields.
export function methodSpecs(manifest) {
  const scoring = manifest.scoring;
  if (scoring.method_specs) return scoring.method_specs;
  const noise = scoring.noise_files || {}, combined = scoring.combined || {};
  const both = ["encoder", "decoder"], specs = { kl: { kind: "encoder", graphs: ["encoder"], samples: 0, noise: null, map: false } };
  for (const m of ["recon", "rel_recon", "smooth_recon", "local"]) specs[m] = { kind: "reconstruction", graphs: both, samples: 0, noise: null, map: m === "local" };
  for (const m of ["elbo", "iwae", "too_likely"]) specs[m] = { kind: "monte_carlo", graphs: both, samples: noise[m] ? noise[m].shape[0] : 0, noise: noise[m] ? noise[m].file : null, map: false, importance: m === "iwae", negate: m === "too_likely" };
  if (scoring.defect) specs.defect = { kind: "defect", graphs: ["defect"], samples: 0, noise: null, map: false, window: scoring.defect_window ?? 5 };
  if (combined.parts) specs.combined = { kind: "combination", graphs: both, parts: combined.parts, part_samples: { elbo: combined.elbo_samples || 1, too_likely: combined.elbo_samples || 1 }, map: combined.parts.includes("local") };
  return specs;
}

// Whether this program computes a method of the bundle (the importance-weighted iwae is left to Python).
export function implemented(specs, name) {
  const spec = specs[name];
  if (!spec) return false;
  if (spec.kind === "reconstruction") return name in RECONSTRUCTION;
  if (spec.kind === "monte_carlo") return !spec.importance;
  if (spec.kind === "combination") return spec.parts.every((p) => specs[p] && specs[p].kind !== "combination" && implemented(specs, p));
  return spec.kind === "encoder" || spec.kind === "defect";
}

export class BundleError extends Error {}

async function readVerified(readFile, sha256Hex, manifest, name) {
  const entry = manifest.files && manifest.files[name];
  if (!entry || typeof entry.sha256 !== "string") throw new BundleError(`the manifest has no sha256 for ${name}`);
  let data;
  try {
    data = await readFile(name);
  } catch (err) {
    throw new BundleError(`${name} is missing or unreadable; re-export the bundle (${err.message})`);
  }
  const digest = await sha256Hex(data);
  if (digest !== entry.sha256) {
    throw new BundleError(`${name}: sha256 ${digest.slice(0, 16)}... does not match the manifest's ` +
      `${entry.sha256.slice(0, 16)}...; refusing to load it`);
  }
  return data;
}

function calibrationOf(manifest, method) {
  const cal = manifest.calibration && manifest.calibration.methods && manifest.calibration.methods[method];
  if (!cal || !Array.isArray(cal.scores) || cal.scores.length < 2) {
    throw new BundleError(`the bundle does not calibrate method ${method}`);
  }
  return { threshold: cal.threshold, scores: Float64Array.from(cal.scores), tail: cal.tail || null };
}

// A combination's parts, each with its reference scores (sorted) and tail from the combination's calibration.
function combinationParts(manifest, name, spec) {
  const cal = manifest.calibration.methods[name];
  if (!Array.isArray(spec.parts) || spec.parts.length < 2 || !cal || !cal.references) {
    throw new BundleError(`the bundle stores no parts for the ${name} score (it predates them); re-export it`);
  }
  const shares = logShares(spec);
  return spec.parts.map((name, i) => {
    const ref = cal.references[name];
    if (!ref || !Array.isArray(ref.scores) || ref.scores.length < 2) {
      throw new BundleError(`the combined part ${name} has no reference scores`);
    }
    // a bounded tail (shape < 0) is read as exponential here, as edgevae.runtime.maps.Reference does
    const tail = ref.tail ? { ...ref.tail, shape: Math.max(ref.tail.shape, 0) } : null;
    return { name, scores: Float64Array.from(ref.scores), tail, logShare: shares[i] };
  });
}

// ln(k w_i / sum(w)) per part of a combination with weights (scoring.combined.weights): part i's share of the
// false-alarm budget, over which its p-value is read; 0 for every part without weights or with equal ones.
function logShares(spec) {
  const k = spec.parts.length, w = spec.weights;
  if (w === undefined || w === null) return new Array(k).fill(0);
  if (!Array.isArray(w) || w.length !== k || !w.every((v) => typeof v === "number" && Number.isFinite(v) && v > 0)) {
    throw new BundleError(`method combined has bad weights: one positive number per part is needed`);
  }
  if (w.every((v) => v === w[0])) return new Array(k).fill(0);
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((v) => Math.log((k * v) / total));
}

// The anomaly-map statistics (scoring.map): per-pixel mean and spread, float32 (2, H, W).
async function mapStats(readFile, sha256Hex, manifest) {
  const entry = manifest.scoring.map;
  if (!entry) throw new BundleError("the bundle stores no anomaly-map statistics (it predates them); re-export it");
  const bytes = await readVerified(readFile, sha256Hex, manifest, entry.file);
  const n = manifest.input.height * manifest.input.width;
  if (bytes.byteLength !== 8 * n || !(entry.top_k >= 1 && entry.top_k <= n)) {
    throw new BundleError(`${entry.file} does not hold float32 (2, ${manifest.input.height}, ${manifest.input.width})`);
  }
  const values = new Float32Array(bytes.slice().buffer, 0, 2 * n);
  return { mean: values.subarray(0, n), spread: values.subarray(n), sigma: entry.sigma, topK: entry.top_k };
}

// ------------------------------------------------------------------------------------------ signatures
// What a signature covers (docs/bundle-format.md): this line and the manifest in RFC 8785 canonical JSON.
const PAYLOAD_PREFIX = "edgevae-bundle-signature-v1\n";
// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow it.
const ED25519_SPKI = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

// RFC 8785: keys sorted by UTF-16 code units (JavaScript's default sort), numbers and strings as JSON.stringify.
export function canonicalJSON(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJSON).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonicalJSON(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

// The raw 32 bytes of an Ed25519 public key in a PEM file (edgevae keygen's KEY.pub).
export function rawPublicKey(pem) {
  const body = pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, "").replace(/\s+/g, "");
  const der = fromBase64(body);
  if (der.length !== 44 || ED25519_SPKI.some((b, i) => der[i] !== b)) throw new Error("not an Ed25519 public key (PEM)");
  return der.slice(12);
}

export async function fingerprint(raw, sha256Hex) {
  return `sha256:${(await sha256Hex(raw)).slice(0, 32)}`;
}

// Refuses the manifest unless one of the trusted raw keys signed it; `verify(raw, signature, payload)` is the
// host's Ed25519 check. Messages match edgevae.runtime's.
async function checkSignature(readFile, sha256Hex, verify, trusted, manifest) {
  const names = await Promise.all(trusted.map((raw) => fingerprint(raw, sha256Hex)));
  let signature;
  let text;
  try {
    text = new TextDecoder().decode(await readFile("edgevae.sig"));
  } catch (error) {
    throw new BundleError(`the bundle is not signed (${error.message}), and only bundles signed by a trusted key may load (trusted: ${names.join(", ")})`);
  }
  try {
    signature = JSON.parse(text);
  } catch (error) {
    throw new BundleError(`edgevae.sig is not valid JSON (${error.message}); refusing to load the bundle`);
  }
  const index = names.indexOf(signature.key_fingerprint);
  if (index < 0) throw new BundleError(`signed by ${signature.key_fingerprint}, which is not a trusted key (trusted: ${names.join(", ")}); refusing to load it`);
  const payload = new TextEncoder().encode(PAYLOAD_PREFIX + canonicalJSON(manifest));
  let valid = false, reason = "";
  try {
    valid = await verify(trusted[index], fromBase64(signature.signature), payload);
  } catch (error) { // a malformed signature or key fails verification; the reason goes into the message
    reason = ` (${error.message})`;
  }
  if (!valid) throw new BundleError(`the signature by ${signature.key_fingerprint} does not match the manifest${reason}: the bundle was altered after it was signed. Refusing to load it`);
  for (const name of Object.keys(manifest.files || {})) { // the fp32 graphs are read and checked when opened
    if (name !== "encoder.onnx" && name !== "decoder.onnx") await readVerified(readFile, sha256Hex, manifest, name);
  }
}

// Opens a bundle: checks format and schema (and, given trusted keys, the signature and every listed file),
// verifies every file it uses, creates both sessions.
export async function openBundle(ort, readFile, sha256Hex, { method = null, sessionOptions = {}, trustedKeys = [],
  verifyEd25519 = null } = {}) {
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await readFile("edgevae.json")));
  } catch (err) {
    throw new BundleError(`not a bundle: edgevae.json is missing or not JSON (${err.message})`);
  }
  if (manifest.format !== "edgevae-bundle" || manifest.schema_version !== 1) {
    throw new BundleError("not an edgevae manifest of schema version 1");
  }
  if (trustedKeys.length > 0) await checkSignature(readFile, sha256Hex, verifyEd25519, trustedKeys, manifest);
  const specs = methodSpecs(manifest), chosen = method || manifest.scoring.default_method;
  if (!implemented(specs, chosen)) {
    const here = Object.keys(specs).filter((m) => implemented(specs, m));
    throw new BundleError(`method ${chosen} is not implemented here (${here.join(", ")})`);
  }
  const spec = specs[chosen];
  const bundle = {
    manifest, method: chosen, specs,
    channels: manifest.input.channels, height: manifest.input.height, width: manifest.input.width,
    latent: manifest.latent_dim, bernoulli: manifest.likelihood === "bernoulli",
    sigma: manifest.scoring.smooth_sigma ?? 1.0, calibration: calibrationOf(manifest, chosen), noise: {}, ort,
    parts: spec.kind === "combination" ? combinationParts(manifest, chosen, spec) : [], map: null,
  };
  bundle.tiling = manifest.tiling ? tilingOf(manifest, chosen, bundle) : null;
  if ([chosen, ...bundle.parts.map((p) => p.name)].some((m) => specs[m].map)) {
    bundle.map = await mapStats(readFile, sha256Hex, manifest);
    if (bundle.tiling && bundle.tiling.positional) Object.assign(bundle.tiling.positional, await frameStats(readFile, sha256Hex, manifest, bundle.tiling.positional, bundle.tiling.positional.file));
  }
  const pos = bundle.tiling && bundle.tiling.positional;
  if (pos && pos.defectFile && [chosen, ...bundle.parts.map((p) => p.name)].some((m) => specs[m].kind === "defect")) {
    const { mean, spread } = await frameStats(readFile, sha256Hex, manifest, pos, pos.defectFile);
    pos.defectMean = mean;
    pos.defectSpread = spread;
  }
  if (pos && pos.alignment && (pos.mean || pos.defectMean)) await loadAlignment(readFile, sha256Hex, manifest, pos, bundle.channels);
  for (const name of [chosen, ...bundle.parts.map((p) => p.name)]) {
    if (specs[name].kind === "monte_carlo") bundle.noise[name] = await noiseOf(readFile, sha256Hex, manifest, name, specs[name], bundle.latent);
  }
  // both graphs whatever the method: the page also generates and shows reconstructions
  bundle.encoder = await ort.InferenceSession.create(await readVerified(readFile, sha256Hex, manifest, "encoder.onnx"), sessionOptions);
  bundle.decoder = await ort.InferenceSession.create(await readVerified(readFile, sha256Hex, manifest, "decoder.onnx"), sessionOptions);
  // the defect head's graph, when the bundle has one (the page shows its map whatever the method)
  const defect = manifest.scoring.defect;
  const needed = [chosen, ...bundle.parts.map((p) => p.name)].some((m) => specs[m].kind === "defect");
  if (needed && !(defect && defect.file)) throw new BundleError("the bundle has no defect head (scoring.defect); train with it and export again");
  bundle.defect = defect && defect.file
    ? await ort.InferenceSession.create(await readVerified(readFile, sha256Hex, manifest, defect.file), sessionOptions) : null;
  return bundle;
}

// A tiled bundle's tiling section (edgevae.runtime.tiles), checked against what this program does: tiles of the
// input's size, the largest tile score, no shrinking before tiling, position-free statistics; with the method's
// image-level calibration. -> { stride, fpr, tilesMedian (0: not said), threshold, scores, tail }.
function tilingOf(manifest, method, bundle) {
  const t = manifest.tiling, side = Math.min(bundle.height, bundle.width);
  if (!Array.isArray(t.tile) || t.tile.length !== 2 || t.tile[0] !== bundle.height || t.tile[1] !== bundle.width) {
    throw new BundleError(`tiling.tile must be the input's [height, width] ([${bundle.height}, ${bundle.width}])`);
  }
  if (!Number.isInteger(t.stride) || t.stride < 1 || t.stride > side) {
    throw new BundleError(`tiling.stride must be a whole number in 1..${side} (the tile's side)`);
  }
  if ((t.aggregate ?? "max") !== "max") throw new BundleError('tiling.aggregate must be "max", the one aggregate edgevae scores with');
  if ((t.downscale ?? 1) !== 1) {
    throw new BundleError(`this tiled bundle shrinks images ${t.downscale}x before tiling (tiling.downscale), which this `
      + "program does not do; score it with the Python runtime (edgevae score)");
  }
  if (typeof (t.positional ?? false) !== "boolean") {
    throw new BundleError("tiling.positional must be true (a fixed camera) or false (a stationary surface)");
  }
  const positional = t.positional ? positionalOf(t, bundle) : null;
  const cal = t.calibration, entry = cal && cal.methods && cal.methods[method], median = cal ? (cal.tiles_median ?? 0) : 0;
  if (!entry || !Number.isFinite(entry.threshold) || !Array.isArray(entry.scores) || entry.scores.length < 2
      || !(cal.fpr > 0 && cal.fpr < 1) || !Number.isInteger(median) || median < 0) {
    throw new BundleError(`method ${method} has no image-level calibration in this tiled bundle (tiling.calibration: `
      + "threshold, fpr in (0, 1), tiles_median >= 0); calibrate it on whole images with edgevae calibrate");
  }
  return { stride: t.stride, fpr: cal.fpr, tilesMedian: median, threshold: entry.threshold,
    scores: Float64Array.from(entry.scores), tail: entry.tail || null, positional };
}

// A fixed camera's tiling (positional: true): its frame, its per-position statistics' file entry and, for a
// combination, its parts' references read per position (they replace the tiles' own in bundle.parts).
function positionalOf(t, bundle) {
  const frame = t.frame, map = t.map || {}, whole = (v) => Number.isInteger(v);
  if (!Array.isArray(frame) || frame.length !== 2 || !whole(frame[0]) || !whole(frame[1])
      || frame[0] < bundle.height || frame[1] < bundle.width || frame[0] * frame[1] > 1 << 26) {
    throw new BundleError(`tiling.frame must be [height, width] for a fixed camera (tiling.positional), at least one tile (${bundle.height}x${bundle.width}) and at most 2^26 pixels`);
  }
  if (typeof map.file !== "string" || !map.file || map.file.includes("/") || !Array.isArray(map.shape)
      || map.shape.length !== 3 || map.shape[0] !== 2 || map.shape[1] !== frame[0] || map.shape[2] !== frame[1]) {
    throw new BundleError(`tiling.map must name a file in the bundle of shape [2, ${frame[0]}, ${frame[1]}] (the frame)`);
  }
  if (!(map.sigma > 0 && map.sigma <= 64) || !whole(map.top_k) || map.top_k < 1 || map.top_k > bundle.height * bundle.width) {
    throw new BundleError(`tiling.map has a sigma outside (0, 64] or a top_k outside 1..${bundle.height * bundle.width}`);
  }
  for (const part of bundle.parts) {
    const ref = t.references && t.references[part.name];
    if (!ref || !Array.isArray(ref.scores) || ref.scores.length < 2) {
      throw new BundleError(`a fixed camera's combined part ${part.name} has no reference (tiling.references); re-export the bundle`);
    }
    part.scores = Float64Array.from(ref.scores);
    part.tail = ref.tail ? { ...ref.tail, shape: Math.max(ref.tail.shape, 0) } : null;
  }
  const defectMap = t.defect_map;
  if (defectMap !== undefined && defectMap !== null && (typeof defectMap !== "object" || typeof defectMap.file !== "string"
      || !defectMap.file || defectMap.file.includes("/") || !Array.isArray(defectMap.shape) || defectMap.shape.length !== 3
      || defectMap.shape[0] !== 2 || defectMap.shape[1] !== frame[0] || defectMap.shape[2] !== frame[1])) {
    throw new BundleError(`tiling.defect_map must name a file in the bundle of shape [2, ${frame[0]}, ${frame[1]}] (the frame)`);
  }
  return { height: frame[0], width: frame[1], file: map.file, sigma: map.sigma, topK: map.top_k, mean: null, spread: null,
    defectFile: defectMap ? defectMap.file : null, defectMean: null, defectSpread: null,
    alignment: t.alignment == null ? null : alignmentOf(t.alignment, frame, bundle.channels) };
}

// The largest frame alignment radius a manifest may give (edgevae.runtime.tiles.ALIGN_RADIUS_MAX).
const MAX_ALIGN_RADIUS = 8;

// A fixed camera's frame alignment (tiling.alignment): the reference's file, the radius, the tie margin and the
// aligned statistics' files, checked against the frame and the input's channels.
function alignmentOf(a, frame, channels) {
  const most = Math.min(MAX_ALIGN_RADIUS, Math.floor(Math.min(frame[0], frame[1]) / 2) - 1);
  const names = (e, lead) => e !== null && typeof e === "object" && typeof e.file === "string" && e.file !== ""
    && !e.file.includes("/") && !e.file.includes("\\") && e.file !== "." && e.file !== ".." && Array.isArray(e.shape)
    && e.shape.length === 3 && e.shape[0] === lead && e.shape[1] === frame[0] && e.shape[2] === frame[1];
  const tie = a.tie ?? 1e-6;
  if (typeof a !== "object" || !names(a, channels) || !Number.isInteger(a.radius) || a.radius < 1 || a.radius > most
      || typeof tie !== "number" || !(tie >= 0 && tie < 1e-3) || !names(a.map, 2)
      || (a.defect_map != null && !names(a.defect_map, 2))) {
    throw new BundleError(`tiling.alignment must name a reference file of shape [${channels}, ${frame[0]}, ${frame[1]}] `
      + `(the input's channels and the frame), a whole radius in 1..${most}, a tie in [0, 0.001) and map (and `
      + `defect_map) files of shape [2, ${frame[0]}, ${frame[1]}]`);
  }
  return { file: a.file, radius: a.radius, tie, mapFile: a.map.file, defectFile: a.defect_map ? a.defect_map.file : null,
    reference: null, mean: null, spread: null, defectMean: null, defectSpread: null };
}

// A fixed camera's alignment files: the reference (float32 (C, frame H, frame W), finite) and the aligned
// statistics the method reads, each checked against its sha256 and size.
async function loadAlignment(readFile, sha256Hex, manifest, pos, channels) {
  const al = pos.alignment, n = channels * pos.height * pos.width;
  const bytes = await readVerified(readFile, sha256Hex, manifest, al.file);
  if (bytes.byteLength !== 4 * n) throw new BundleError(`${al.file} does not hold float32 (${channels}, ${pos.height}, ${pos.width})`);
  al.reference = new Float32Array(bytes.slice().buffer, 0, n);
  if (!al.reference.every(Number.isFinite)) throw new BundleError(`${al.file} holds a value that is not finite`);
  if (pos.mean) Object.assign(al, await frameStats(readFile, sha256Hex, manifest, pos, al.mapFile));
  if (pos.defectMean && al.defectFile) {
    const { mean, spread } = await frameStats(readFile, sha256Hex, manifest, pos, al.defectFile);
    al.defectMean = mean;
    al.defectSpread = spread;
  }
}

// A frame's shift [dy, dx] against the alignment reference (edgevae.runtime.tiles.FrameAlignment.estimate): the
// shift within the radius whose mean squared difference between the frame (float32 CHW) and the reference moved
// by it is smallest over the interior, in double; shifts within the tie margin (relative) of the smallest tie,
// the zero shift winning a tie, then the first in row-major order.
export function frameShift(al, x, channels, height, width) {
  const r = al.radius, side = 2 * r + 1, errors = new Float64Array(side * side);
  const count = channels * (height - 2 * r) * (width - 2 * r);
  for (let i = 0; i < side; i++) for (let j = 0; j < side; j++) {
    const dy = i - r, dx = j - r;
    let sum = 0;
    for (let c = 0; c < channels; c++) for (let y = r; y < height - r; y++) {
      const row = (c * height + y) * width, ref = (c * height + y - dy) * width - dx;
      for (let k = r; k < width - r; k++) {
        const d = x[row + k] - al.reference[ref + k];
        sum += d * d;
      }
    }
    errors[i * side + j] = sum / count;
  }
  let low = Infinity;
  for (const e of errors) if (e < low) low = e;
  const limit = low * (1 + al.tie);
  if (errors[r * side + r] <= limit) return [0, 0];
  const k = errors.findIndex((e) => e <= limit);
  return [Math.floor(k / side) - r, (k % side) - r];
}

// A fixed camera's per-position statistics (tiling.map's or tiling.defect_map's file, float32 (2, frame H,
// frame W)) -> { mean, spread }.
async function frameStats(readFile, sha256Hex, manifest, positional, file) {
  const bytes = await readVerified(readFile, sha256Hex, manifest, file), n = positional.height * positional.width;
  if (bytes.byteLength !== 8 * n) {
    throw new BundleError(`${file} does not hold float32 (2, ${positional.height}, ${positional.width})`);
  }
  const values = new Float32Array(bytes.slice().buffer, 0, 2 * n);
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(values[i]) || !(values[n + i] > 0) || !Number.isFinite(values[n + i])) {
      throw new BundleError(`${file} holds a mean that is not finite or a spread that is not positive`);
    }
  }
  return { mean: values.subarray(0, n), spread: values.subarray(n) };
}

// A Monte-Carlo method's shared noise (its spec's file, float32 (K, D)).
async function noiseOf(readFile, sha256Hex, manifest, name, spec, latent) {
  if (!spec.noise) throw new BundleError(`the bundle carries no ${name} noise file (exported before edgevae stored it); re-export it`);
  const bytes = await readVerified(readFile, sha256Hex, manifest, spec.noise);
  const k = spec.samples;
  if (bytes.byteLength !== 4 * k * latent) throw new BundleError(`${spec.noise} is not float32 (${k}, ${latent})`);
  return new Float32Array(bytes.slice().buffer, 0, k * latent); // little-endian, as on every host here
}

// 8-bit pixels (RGBA, RGB or gray, `stride` bytes a pixel) of the bundle's size -> float32 CHW in [0, 1].
// One channel: Pillow's convert("L"), ITU-R 601-2 luma in 16-bit fixed point.
// A tiled bundle takes any size at least one tile large (scoreTiled scores it).
export function preprocess(bundle, pixels, width, height, stride) {
  if (bundle.tiling && (height < bundle.height || width < bundle.width)) { // edgevae.runtime.tiles.tile_starts's words
    const short = height < bundle.height;
    throw new Error(`an image side of ${short ? height : width} px is shorter than one tile (${short ? bundle.height : bundle.width} px); `
      + "tiled bundles score images at least one tile large");
  }
  if (!bundle.tiling && (width !== bundle.width || height !== bundle.height)) {
    throw new Error(`${width}x${height}, but the bundle takes ${bundle.width}x${bundle.height} images (resize before scoring)`);
  }
  const n = width * height, x = new Float32Array(n * bundle.channels);
  for (let i = 0; i < n; i++) {
    const r = pixels[i * stride], g = pixels[i * stride + (stride > 1 ? 1 : 0)], b = pixels[i * stride + (stride > 1 ? 2 : 0)];
    if (bundle.channels === 1) x[i] = Math.fround(((r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16) / 255);
    else { x[i] = Math.fround(r / 255); x[n + i] = Math.fround(g / 255); x[2 * n + i] = Math.fround(b / 255); }
  }
  return x;
}

async function encode(bundle, x) {
  const { ort } = bundle;
  const out = await bundle.encoder.run({ x: new ort.Tensor("float32", x, [1, bundle.channels, bundle.height, bundle.width]) });
  return { mu: out.mu.data, logvar: out.logvar.data, kl: out.kl.data[0] };
}

// The defect head's logits for one preprocessed image (Float32Array, H*W).
export async function defectLogits(bundle, x) {
  const { ort } = bundle;
  const out = await bundle.defect.run({ x: new ort.Tensor("float32", x, [1, bundle.channels, bundle.height, bundle.width]) });
  return out.defect_logits.data;
}

// The defect map: per-pixel probabilities, the sigmoid of the logits (Float32Array, H*W).
export function defectProbabilities(logits) {
  return Float32Array.from(logits, (z) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z))));
}

// The defect score: the largest mean of the logits over a window x window square (clipped to the image), summed
// in double through an integral image, as edgevae.runtime.maps.defect_score does.
export function windowMaxMean(z, h, w, window) {
  const kh = Math.min(window, h), kw = Math.min(window, w), integral = new Float64Array((h + 1) * (w + 1));
  for (let i = 1; i <= h; i++) {
    let row = 0;
    for (let j = 1; j <= w; j++) { row += z[(i - 1) * w + j - 1]; integral[i * (w + 1) + j] = integral[(i - 1) * (w + 1) + j] + row; }
  }
  let best = -Infinity;
  for (let i = kh; i <= h; i++) for (let j = kw; j <= w; j++) {
    const sum = integral[i * (w + 1) + j] - integral[(i - kh) * (w + 1) + j] - integral[i * (w + 1) + j - kw] + integral[(i - kh) * (w + 1) + j - kw];
    if (sum > best) best = sum;
  }
  return best / (kh * kw);
}

async function decode(bundle, t, count) {
  const { ort } = bundle;
  const out = await bundle.decoder.run({ t: new ort.Tensor("float32", t, [count, bundle.latent]) });
  return { mean: out.x_mean.data, param: (bundle.bernoulli ? out.x_logits : out.x_logvar).data };
}

// Per pixel, the sum over channels of the Gaussian-smoothed residual (x - mean) squared: Float64Array (H*W).
function smoothedSquare(bundle, x, mean, sigma) {
  const { height: h, width: w } = bundle, radius = Math.ceil(4 * sigma), g = [];
  let sum = 0;
  for (let k = -radius; k <= radius; k++) { g.push(Math.exp(-0.5 * (k / sigma) ** 2)); sum += g[g.length - 1]; }
  for (let k = 0; k < g.length; k++) g[k] = Math.fround(g[k] / sum); // the runtime's float32 kernel
  const r = new Float64Array(h * w), t = new Float64Array(h * w), sq = new Float64Array(h * w);
  for (let c = 0; c < bundle.channels; c++) {
    for (let i = 0; i < h * w; i++) r[i] = x[c * h * w + i] - mean[c * h * w + i];
    for (let y = 0; y < h; y++) for (let i = 0; i < w; i++) { // rows, then columns; zero beyond the edges
      let s = 0;
      for (let k = -radius; k <= radius; k++) if (i + k >= 0 && i + k < w) s += g[k + radius] * r[y * w + i + k];
      t[y * w + i] = s;
    }
    for (let col = 0; col < w; col++) for (let i = 0; i < h; i++) {
      let s = 0;
      for (let k = -radius; k <= radius; k++) if (i + k >= 0 && i + k < h) s += g[k + radius] * t[(i + k) * w + col];
      sq[i * w + col] += s * s;
    }
  }
  return sq;
}

function smoothedEnergy(bundle, x, mean) {
  const sq = smoothedSquare(bundle, x, mean, bundle.sigma);
  let total = 0, energy = 1;
  for (let i = 0; i < sq.length; i++) total += sq[i];
  for (let i = 0; i < x.length; i++) energy += x[i] * x[i] + mean[i] * mean[i];
  return total / energy;
}

// The anomaly map of an image against its reconstruction: the smoothed residual's magnitude, standardised per
// pixel by the bundle's statistics (Float64Array, H*W; standard deviations above normal at each pixel).
export function anomalyMap(bundle, x, mean) {
  const { mean: mu, spread, sigma } = bundle.map, sq = smoothedSquare(bundle, x, mean, sigma);
  for (let i = 0; i < sq.length; i++) sq[i] = (Math.fround(Math.sqrt(sq[i])) - mu[i]) / spread[i];
  return sq;
}

function localScore(bundle, x, mean) {
  const values = anomalyMap(bundle, x, mean).sort((a, b) => b - a);
  let total = 0;
  for (let i = 0; i < bundle.map.topK; i++) total += values[i];
  return total / bundle.map.topK;
}

function logLikelihood(bundle, x, mean, param, offset, paramOffset) {
  let ll = 0, sq = 0;
  for (let i = 0; i < x.length; i++) {
    if (bundle.bernoulli) { const l = param[offset + i]; ll += x[i] * l - (Math.max(l, 0) + Math.log1p(Math.exp(-Math.abs(l)))); }
    else sq += (x[i] - mean[offset + i]) ** 2;
  }
  if (bundle.bernoulli) return ll;
  const v = param[paramOffset];
  return -0.5 * sq * Math.exp(-v) - 0.5 * x.length * (v + Math.log(2 * Math.PI));
}

// One method's score (not a combination) from the encoder's outputs, and the reconstruction when it decodes one.
async function methodScore(bundle, method, x, { mu, logvar, kl }, samples) {
  const spec = bundle.specs[method];
  if (spec.kind === "encoder") return { score: Math.fround(kl), reconstruction: null };
  if (spec.kind === "defect") {
    const logits = await defectLogits(bundle, x);
    return { score: Math.fround(windowMaxMean(logits, bundle.height, bundle.width, spec.window)), reconstruction: null };
  }
  if (spec.kind === "monte_carlo") { // the first `samples` rows of the method's noise
    const k = Math.min(samples, spec.samples), d = bundle.latent, t = new Float32Array(k * d), noise = bundle.noise[method];
    for (let s = 0; s < k; s++) {
      for (let j = 0; j < d; j++) t[s * d + j] = mu[j] + Math.fround(Math.exp(Math.fround(0.5 * logvar[j]))) * noise[s * d + j];
    }
    const { mean, param } = await decode(bundle, t, k);
    let ll = 0;
    for (let s = 0; s < k; s++) ll += logLikelihood(bundle, x, mean, param, s * x.length, s);
    const elbo = Math.fround(kl - ll / k);
    return { score: spec.negate ? -elbo : elbo, reconstruction: null };
  }
  const { mean } = await decode(bundle, Float32Array.from(mu), 1);
  let sq = 0, energy = 1;
  for (let i = 0; i < x.length; i++) { sq += (x[i] - mean[i]) ** 2; energy += x[i] * x[i] + mean[i] * mean[i]; }
  return { score: Math.fround(RECONSTRUCTION[method](bundle, x, mean, sq, energy)), reconstruction: mean };
}

// The bundle's score of one preprocessed image, and its reconstruction (the decoded posterior mean) when the
// method decodes it. Scores are rounded to float32, as in the Python runtime. combined: -ln of the smallest
// p-value of its parts against their reference scores.
export async function scoreImage(bundle, x) {
  const spec = bundle.specs[bundle.method];
  if (spec.kind === "defect") return methodScore(bundle, bundle.method, x, {}, 0); // the defect graph alone
  const encoded = await encode(bundle, x);
  if (spec.kind !== "combination") return methodScore(bundle, bundle.method, x, encoded, spec.samples);
  const { scores, reconstruction } = await partScoresOf(bundle, x, encoded);
  return { score: combinedStatistic(bundle, scores), reconstruction };
}

// A combination's parts' scores of one image (in bundle.parts' order), and the reconstruction one of them decoded;
// with skipDefect, defect parts are left NaN for the caller (a fixed camera reads them from the whole frame).
async function partScoresOf(bundle, x, encoded, skipDefect = false) {
  const spec = bundle.specs[bundle.method], scores = [];
  let reconstruction = null;
  for (const part of bundle.parts) {
    if (skipDefect && bundle.specs[part.name].kind === "defect") { scores.push(NaN); continue; }
    const result = await methodScore(bundle, part.name, x, encoded, spec.part_samples[part.name] ?? bundle.specs[part.name].samples);
    reconstruction = reconstruction || result.reconstruction;
    scores.push(result.score);
  }
  return { scores, reconstruction };
}

// -ln of the smallest p-value of the parts' scores, each over its share of the budget, read in log space: no floor
// far beyond the references.
function combinedStatistic(bundle, scores) {
  let logPMin = 0;
  bundle.parts.forEach((part, i) => { logPMin = Math.min(logPMin, logPValueOf(part, scores[i]) - part.logShare); });
  return Math.fround(Math.min(-logPMin, 1e30));
}

// Start offsets of the tiles along one side (edgevae.runtime.tiles.tile_starts): every stride, the last one flush
// with the far edge.
export function tileStarts(length, tile, stride) {
  const starts = [];
  for (let at = 0; at <= length - tile; at += stride) starts.push(at);
  if (starts[starts.length - 1] !== length - tile) starts.push(length - tile);
  return starts;
}

// A tiled bundle's score of one preprocessed image (float32 CHW, height x width): the largest score of its tiles
// (NaN when a tile's is, as numpy's max), each tile scored as an image of the bundle's size; one tile is copied
// out at a time. -> { score, tiles }.
export async function scoreTiled(bundle, x, height, width) {
  const pos = bundle.tiling.positional;
  if (pos && (height !== pos.height || width !== pos.width)) {
    throw new Error(`this bundle is for a fixed camera: it scores frames of ${pos.height}x${pos.width} px (its statistics `
      + `are per position), got ${height}x${width}; crop or resize frames to the training size`);
  }
  if (pos && (bundle.map || pos.defectMean)) return scorePositional(bundle, x, height, width);
  let best = -Infinity, tiles = 0;
  await eachTile(bundle, x, height, width, async (tile) => {
    const { score } = await scoreImage(bundle, tile);
    if (Number.isNaN(score) || score > best) best = score;
    tiles++;
  });
  return { score: best, tiles };
}

// A fixed camera's score of one frame (edgevae.runtime.tiles.positional_tile_scores): every tile's residual
// magnitude stitched over the frame (averaged where tiles overlap, in float32 as the runtime sums it) and
// standardised per pixel by the frame's statistics; a tile's local is the mean of the top_k largest values of that
// map under it. With the defect head's per-position statistics, its logits are stitched and standardised alike and
// a tile's defect is the largest window mean of that map inside it. A combination reads its parts (local and
// defect the per-position ones) against tiling.references.
async function scorePositional(bundle, x, height, width) {
  const pos = bundle.tiling.positional, { height: th, width: tw } = bundle, spec = bundle.specs[bundle.method];
  const combination = spec.kind === "combination", residual = Boolean(bundle.map), defect = Boolean(pos.defectMean);
  const total = new Float32Array(height * width), count = new Float32Array(height * width), where = [], partScores = [];
  const logits = defect ? new Float32Array(height * width) : null;
  const add = (sums, y, x0, values) => {
    for (let r = 0; r < th; r++) for (let k = 0; k < tw; k++) sums[(y + r) * width + x0 + k] += values ? values[r * tw + k] : 1;
  };
  await eachTile(bundle, x, height, width, async (tile, y, x0) => {
    const encoded = residual || combination ? await encode(bundle, tile) : null;
    const parts = combination ? await partScoresOf(bundle, tile, encoded, defect) : null;
    if (parts) partScores.push(parts.scores);
    if (residual) { // the posterior mean's reconstruction, unless a part decoded it
      const mean = (parts && parts.reconstruction) || (await decode(bundle, Float32Array.from(encoded.mu), 1)).mean;
      const sq = smoothedSquare(bundle, tile, mean, pos.sigma);
      add(total, y, x0, Float32Array.from(sq, (v) => Math.sqrt(v)));
    }
    if (defect) add(logits, y, x0, await defectLogits(bundle, tile));
    add(count, y, x0, null);
    where.push([y, x0]);
  });
  const al = pos.alignment && pos.alignment.reference ? pos.alignment : null;
  const [dy, dx] = al ? frameShift(al, x, bundle.channels, height, width) : [0, 0], r = al ? al.radius : 0;
  const clamp = (v, hi) => (v < 0 ? 0 : v > hi ? hi : v);
  // aligned: the aligned statistics moved by the frame's shift, the border band of radius pixels as they are
  const standardise = (sums, mean, spread, alignedMean, alignedSpread) => {
    for (let y = 0; y < height; y++) for (let k = 0; k < width; k++) {
      const i = y * width + k, inside = al && y >= r && y < height - r && k >= r && k < width - r;
      const at = inside ? clamp(y - dy, height - 1) * width + clamp(k - dx, width - 1) : i;
      const m = inside ? alignedMean : mean, s = inside ? alignedSpread : spread;
      sums[i] = Math.fround(Math.fround(sums[i] / count[i]) - m[at]) / s[at];
    }
  };
  if (residual) standardise(total, pos.mean, pos.spread, al && al.mean, al && al.spread);
  if (defect) {
    standardise(logits, pos.defectMean, pos.defectSpread, al && (al.defectMean || pos.defectMean),
      al && (al.defectSpread || pos.defectSpread));
  }
  let best = -Infinity;
  const values = new Float64Array(th * tw), window = new Float32Array(th * tw);
  const localAt = bundle.parts.findIndex((p) => p.name === "local");
  const defectAt = bundle.parts.findIndex((p) => bundle.specs[p.name].kind === "defect");
  const defectWindow = (defectAt >= 0 ? bundle.specs[bundle.parts[defectAt].name] : spec).window;
  where.forEach(([y, x0], t) => {
    let local = 0, defectScore = 0;
    if (residual) {
      for (let r = 0; r < th; r++) for (let k = 0; k < tw; k++) values[r * tw + k] = total[(y + r) * width + x0 + k];
      values.sort((a, b) => b - a);
      let sum = 0;
      for (let i = 0; i < pos.topK; i++) sum += values[i];
      local = Math.fround(sum / pos.topK);
    }
    if (defect) {
      for (let r = 0; r < th; r++) window.set(logits.subarray((y + r) * width + x0, (y + r) * width + x0 + tw), r * tw);
      defectScore = Math.fround(windowMaxMean(window, th, tw, defectWindow));
    }
    let score;
    if (combination) {
      if (localAt >= 0) partScores[t][localAt] = local;
      if (defectAt >= 0 && defect) partScores[t][defectAt] = defectScore;
      score = combinedStatistic(bundle, partScores[t]);
    } else score = defect && !residual ? defectScore : local;
    if (Number.isNaN(score) || score > best) best = score;
  });
  return { score: best, tiles: where.length };
}

// Calls visit(tile, y, x) for every tile of a preprocessed image (float32 CHW, height x width) on the bundle's
// grid, row by row; the tile (float32 CHW of the bundle's size) is one buffer, refilled for each.
async function eachTile(bundle, x, height, width, visit) {
  const { channels: c, height: th, width: tw } = bundle, tile = new Float32Array(c * th * tw);
  for (const y of tileStarts(height, th, bundle.tiling.stride)) for (const x0 of tileStarts(width, tw, bundle.tiling.stride)) {
    for (let ch = 0; ch < c; ch++) for (let r = 0; r < th; r++) {
      const from = (ch * height + y + r) * width + x0;
      tile.set(x.subarray(from, from + tw), (ch * th + r) * tw);
    }
    await visit(tile, y, x0);
  }
}

// A tiled bundle's defect map of one image at full resolution (Float32Array, height*width): each tile's
// probabilities, averaged where tiles overlap (edgevae.runtime.tiles.stitch of Model.defect_map).
export async function tiledDefectMap(bundle, x, height, width) {
  const { height: th, width: tw } = bundle, total = new Float32Array(height * width), count = new Float32Array(height * width);
  await eachTile(bundle, x, height, width, async (tile, y, x0) => {
    const p = defectProbabilities(await defectLogits(bundle, tile));
    for (let r = 0; r < th; r++) for (let k = 0; k < tw; k++) { total[(y + r) * width + x0 + k] += p[r * tw + k]; count[(y + r) * width + x0 + k] += 1; }
  });
  for (let i = 0; i < total.length; i++) total[i] /= count[i];
  return total;
}

// An image's p-value from p0, its p-value against whole calibration images: an image of `tiles` tiles is
// tiles / n0 independent images of the calibrated size (edgevae.runtime.tiles.size_adjusted_p).
function sizeAdjusted(p0, tiles, n0) {
  return tiles === n0 || p0 >= 1 ? p0 : -Math.expm1(tiles / n0 * Math.log1p(-p0));
}

// A tiled image's p-value and flag (edgevae.runtime.tiles; Model.score_tiled): against the image-level
// calibration, adjusted for its number of tiles; an explicit threshold is compared as it is.
export function tiledPValue(bundle, score, tiles) {
  const t = bundle.tiling;
  return sizeAdjusted(pValueOf(t, score), tiles, t.tilesMedian || tiles);
}

export function tiledIsOutlier(bundle, score, tiles, threshold = null) {
  const t = bundle.tiling, n0 = t.tilesMedian || tiles;
  if (threshold !== null && threshold !== undefined) return score > threshold;
  if (tiles === n0) return score > t.threshold;
  // below the rate that flags an image of this size: the runtime's threshold at that rate, by construction
  return pValueOf(t, score) < -Math.expm1(n0 / tiles * Math.log1p(-t.fpr));
}

// First index with scores[i] >= s (scores.length when none).
function lowerBound(scores, s) {
  let lo = 0, hi = scores.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (scores[mid] < s) lo = mid + 1; else hi = mid; }
  return lo;
}

// The interpolated empirical survival curve: (1 + #{scores >= v}) / (n + 1) at each calibration score v, linear
// between, 1 below the smallest and 1 / (n + 1) beyond the largest (edgevae.runtime.scores.survival_curve).
function curve(scores, s) {
  const n1 = scores.length + 1;
  if (s < scores[0]) return 1;
  if (s > scores[scores.length - 1]) return 1 / n1;
  const hi = lowerBound(scores, s);
  if (scores[hi] === s) return (n1 - hi) / n1;
  const lo = lowerBound(scores, scores[hi - 1]); // the left knot's first index
  const left = (n1 - lo) / n1, right = (n1 - hi) / n1;
  const v = left + (s - scores[lo]) / (scores[hi] - scores[lo]) * (right - left);
  return Number.isFinite(v) ? v : left; // knots a subnormal distance apart
}

// The natural log of the runtime's p-value (edgevae.runtime.scores.log_p_values): the curve, or above the tail's
// start the tail model capped at the curve's value there; in log space it never underflows.
function logPValueOf({ scores, tail }, s) {
  if (tail && s > tail.start) {
    const z = Math.max(s - tail.start, 0) / tail.scale;
    let lp;
    if (Math.abs(tail.shape) < 1e-9) lp = Math.log(tail.fraction) - z;
    else {
      const base = 1 + tail.shape * z;
      lp = base > 0 ? Math.log(tail.fraction) - Math.log(base) / tail.shape : -Infinity;
    }
    return Math.min(lp, Math.log(curve(scores, tail.start)));
  }
  return Math.log(curve(scores, s));
}

function pValueOf(reference, s) {
  return Math.exp(logPValueOf(reference, s));
}

export function pValue(bundle, s) {
  return pValueOf(bundle.calibration, s);
}

// The outlier flag, compared in float32 as numpy compares a float32 score with the threshold.
export function isOutlier(bundle, s, threshold = null) {
  return Math.fround(s) > Math.fround(threshold ?? bundle.calibration.threshold);
}

// Decodes n codes t ~ N(0, I) drawn from a seeded generator (mulberry32 uniforms, Box-Muller): the same seed gives
// the same images on every run. (Not numpy's generator: the Python runtime's images for a seed differ.)
export async function generate(bundle, n, seed = 0) {
  let state = seed >>> 0;
  const uniform = () => { // mulberry32: a 32-bit state, uniform in [0, 1)
    state = (state + 0x6D2B79F5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
  const t = new Float32Array(n * bundle.latent);
  for (let i = 0; i < t.length; i++) t[i] = Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return (await decode(bundle, t, n)).mean;
}

// A PGM or PPM file, read as Pillow reads it (the decoding contract in docs/embedding.md; embed/c/src/inputs.c is
// the C twin): binary P5/P6 and plain P2/P3, '#' comments to the end of the line anywhere in the header, tokens of
// at most 10 characters, one whitespace byte after maxval before binary samples, samples of maxval other than 255
// rescaled to 8 bits with round-half-to-even of v / maxval * 255; 16-bit files (maxval > 255) as the runtime reads
// them (colour: round(v / maxval * 255); grey: Pillow's mode I, brought to 8 bits only when a value exceeds 255).
// -> { pixels (8-bit samples), width, height, stride (samples per pixel) }.
const isSpace = (c) => c === 32 || (c >= 9 && c <= 13);

function readToken(bytes, state) {
  let token = "";
  while (state.pos < bytes.length) {
    const c = bytes[state.pos++];
    if (isSpace(c)) { if (token === "") continue; break; }
    if (c === 35) { // '#': to the end of the line
      while (state.pos < bytes.length && bytes[state.pos] !== 10 && bytes[state.pos] !== 13) state.pos++;
      if (state.pos < bytes.length) state.pos++;
      continue;
    }
    if (token.length === 10) throw new Error("the header holds something other than a whole number");
    token += String.fromCharCode(c);
  }
  return token;
}

function tokenNumber(token) {
  return /^[0-9]{1,10}$/.test(token) ? Number(token) : -1;
}

function roundHalfEven(t) { // Python's round and numpy's rint, for t >= 0
  const r = Math.round(t);
  return Math.abs(t % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function rescale(v, maxval, top = 255) { // round-half-to-even(v / maxval * top), at most top
  if (maxval === top) return Math.min(v, top);
  return Math.min(top, roundHalfEven(v / maxval * top));
}

export function readPNM(bytes, { maxPixels = 1 << 26 } = {}) {
  if (bytes.length < 3 || bytes[0] !== 80 || ![50, 51, 53, 54].includes(bytes[1]) || !isSpace(bytes[2])) {
    throw new Error("not a PGM or PPM file (P2, P3, P5 or P6)");
  }
  const kind = bytes[1] - 48, state = { pos: 3 }, fields = [];
  for (let f = 0; f < 3; f++) {
    const token = readToken(bytes, state);
    if (token === "") throw new Error("the header ends before its width, height and maxval");
    const v = tokenNumber(token);
    if (v < 0) throw new Error("the header holds something other than a whole number");
    fields.push(v);
  }
  const [width, height, maxval] = fields;
  if (maxval < 1 || maxval > 65535) throw new Error("maxval must be in 1..65535");
  const stride = kind === 3 || kind === 6 ? 3 : 1, count = width * height * stride, wide = maxval > 255 ? 2 : 1;
  if (width * height > maxPixels) throw new Error(`${width}x${height}: an image must be at most ${maxPixels} pixels`);
  if (kind >= 5 && bytes.length - state.pos < count * wide) {
    throw new Error(`truncated (the header is not followed by ${count * wide} bytes of samples)`);
  }
  // a plain sample takes a byte at least: refused before allocating for them
  if (kind < 5 && bytes.length - state.pos < count) throw new Error("truncated (fewer samples than width x height)");
  const wideGrey = maxval > 255 && stride === 1, values = new Uint32Array(count); // wideGrey: Pillow's mode I
  let top = 0;
  for (let i = 0; i < count; i++) {
    let v;
    if (kind >= 5) v = wide === 2 ? (bytes[state.pos + 2 * i] << 8) | bytes[state.pos + 2 * i + 1] : bytes[state.pos + i];
    else {
      const token = readToken(bytes, state);
      if (token === "") throw new Error("truncated (fewer samples than width x height)");
      v = tokenNumber(token);
      if (v < 0) throw new Error("a sample that is not a whole number");
      if (v > maxval) throw new Error("a sample above maxval");
    }
    values[i] = !wideGrey ? rescale(v, maxval) : kind === 5 && maxval === 65535 ? v : rescale(v, maxval, 65535);
    top = Math.max(top, values[i]);
  }
  const pixels = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    pixels[i] = !wideGrey ? values[i] : top > 255 ? roundHalfEven(values[i] / 65535 * 255) : Math.min(values[i], 255);
  }
  return { pixels, width, height, stride };
}

// ---------------------------------------------------------------------------------------------- PNG
// A PNG file as edgevae's Python runtime reads it (Pillow, then its conversion to L or RGB; the decoding contract in
// docs/embedding.md), without the browser's image decoder, which premultiplies alpha and so zeroes the colour of
// transparent pixels: every colour type, bit depths 1-16, Adam7 interlacing, palettes and tRNS; CRCs checked.
//   grey 1/2/4/8 bit -> 0/255, v*85, v*17, v;  grey 16 bit -> round-half-even(v / 65535 * 255);
//   RGB(A) 16 bit -> the high byte of each sample (Pillow's RGB;16B);  alpha and tRNS are ignored (Pillow's
//   convert to L or RGB keeps the stored colour);  a palette image becomes the palette's RGB (through RGBA when it
//   has tRNS, which changes nothing here).
// -> { pixels (8-bit samples), width, height, stride (1 grey or 3 RGB), channels (1 or 3, Pillow's mode's) }.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, start, end) {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function inflate(data) {
  // as much as the zlib stream gives: Pillow stops reading once every row is decoded, so a damaged or missing end
  // of the stream (its checksum included) is an error only when rows are missing (unfilter says so)
  const reader = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate")).getReader(), parts = [];
  let broken = null;
  try {
    for (let r = await reader.read(); !r.done; r = await reader.read()) parts.push(r.value);
  } catch (e) {
    broken = e;
  }
  const out = new Uint8Array(await new Blob(parts).arrayBuffer());
  return { out, broken };
}

const SAMPLES = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }; // samples per pixel by colour type

function pngChunks(bytes) {
  // Pillow's reading: every chunk before the image data is CRC-checked; the image data is the run of IDAT chunks
  // that follows (their CRCs are not checked, a chunk cut short by the end of the file gives what it holds);
  // whatever comes after the image data, IEND included, is not needed
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || sig.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), out = { idat: [] };
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos), type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const end = pos + 8 + length;
    if (out.idat.length && type !== "IDAT") return out; // the end of the image data
    if (type === "IDAT") {
      if (length > 0x7fffffff) throw new Error("broken PNG file (IDAT length)");
      out.idat.push(bytes.subarray(pos + 8, Math.min(end, bytes.length)));
      if (end + 4 > bytes.length) return out;
      pos = end + 4;
      continue;
    }
    if (length > 0x7fffffff || end + 4 > bytes.length) throw new Error("truncated PNG chunk");
    if (crc32(bytes, pos + 4, end) !== view.getUint32(end)) throw new Error(`broken PNG file (${type} checksum)`);
    const body = bytes.subarray(pos + 8, end);
    if (type === "IHDR") {
      if (length !== 13) throw new Error("broken PNG header");
      const h = new DataView(body.buffer, body.byteOffset, 13);
      Object.assign(out, { width: h.getUint32(0), height: h.getUint32(4), depth: body[8], colour: body[9], interlace: body[12] });
    } else if (type === "PLTE") out.palette = body;
    else if (type === "IEND") break;
    pos = end + 4;
  }
  if (out.idat.length) return out;
  throw new Error("truncated PNG file (no image data)");
}

function unfilter(data, offset, width, height, bpp, bytesPerRow) {
  // rows of the (sub)image: one filter byte each, then bytesPerRow bytes; returns the raw rows and the next offset
  const rows = new Uint8Array(height * bytesPerRow);
  for (let y = 0; y < height; y++) {
    if (offset + 1 + bytesPerRow > data.length) throw new Error("truncated PNG image data");
    const filter = data[offset], row = y * bytesPerRow, prev = row - bytesPerRow;
    for (let i = 0; i < bytesPerRow; i++) {
      const a = i >= bpp ? rows[row + i - bpp] : 0, b = y > 0 ? rows[prev + i] : 0;
      const c = i >= bpp && y > 0 ? rows[prev + i - bpp] : 0, v = data[offset + 1 + i];
      let p;
      if (filter === 0) p = v;
      else if (filter === 1) p = v + a;
      else if (filter === 2) p = v + b;
      else if (filter === 3) p = v + ((a + b) >> 1);
      else if (filter === 4) {
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        p = v + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
      } else throw new Error(`broken PNG file (filter ${filter})`);
      rows[row + i] = p & 0xff;
    }
    offset += 1 + bytesPerRow;
  }
  return [rows, offset];
}

function sampleAt(rows, rowStart, index, depth) { // the index-th sample of a row, as an integer of `depth` bits
  if (depth === 8) return rows[rowStart + index];
  if (depth === 16) return (rows[rowStart + 2 * index] << 8) | rows[rowStart + 2 * index + 1];
  const bit = index * depth, byte = rows[rowStart + (bit >> 3)];
  return (byte >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
}

function to8bit(v, depth, colour) { // Pillow's 8-bit value of one sample
  if (depth === 16) return colour === 0 ? rescale16(v) : v >> 8;
  if (colour === 3) return v; // a palette index
  return depth === 8 ? v : depth === 4 ? v * 17 : depth === 2 ? v * 85 : v * 255;
}

function rescale16(v) { // edgevae's rint(v / 65535 * 255), half to even
  return roundHalfEven(v / 65535 * 255);
}

export async function decodePNG(bytes, { maxPixels = 1 << 26, expect = null } = {}) {
  const png = pngChunks(bytes), { width, height, depth, colour } = png;
  if (!(colour in SAMPLES) || ![1, 2, 4, 8, 16].includes(depth) || !width || !height) throw new Error("unsupported PNG header");
  if (width * height > maxPixels) throw new Error(`${width}x${height} is too large to decode`);
  if (expect && (width !== expect.width || height !== expect.height)) { // before anything is inflated
    throw new Error(`${width}x${height}, but the bundle takes ${expect.width}x${expect.height} images (resize before scoring)`);
  }
  if (colour === 3 && !png.palette) throw new Error("broken PNG file (no palette)");
  const samples = SAMPLES[colour], bpp = Math.max(1, (samples * depth) >> 3);
  if (!("width" in png)) throw new Error("broken PNG file (no header)");
  const { out: data, broken } = await inflate(new Uint8Array(await new Blob(png.idat).arrayBuffer()));
  const grey = colour === 0 || colour === 4, stride = grey ? 1 : 3, pixels = new Uint8Array(width * height * stride);
  const passes = png.interlace ? [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]
    : [[0, 0, 1, 1]];
  let offset = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const w = Math.ceil((width - x0) / dx), h = Math.ceil((height - y0) / dy);
    if (w <= 0 || h <= 0) continue;
    const bytesPerRow = Math.ceil((w * samples * depth) / 8);
    let rows;
    try {
      [rows, offset] = unfilter(data, offset, w, h, bpp, bytesPerRow);
    } catch (e) {
      throw broken && e.message.startsWith("truncated") ? new Error(`broken PNG image data (${broken.message})`) : e;
    }
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const target = ((y0 + y * dy) * width + x0 + x * dx) * stride, first = x * samples;
        if (colour === 3) {
          const index = sampleAt(rows, y * bytesPerRow, first, depth);
          if (3 * index + 2 >= png.palette.length) throw new Error("broken PNG file (palette index out of range)");
          for (let c = 0; c < 3; c++) pixels[target + c] = png.palette[3 * index + c];
        } else {
          for (let c = 0; c < stride; c++) pixels[target + c] = to8bit(sampleAt(rows, y * bytesPerRow, first + c, depth), depth, colour);
        }
      }
    }
  }
  return { pixels, width, height, stride, channels: stride };
}

#!/usr/bin/env node
// edgevae-score-node: score images with an edgevae bundle on onnxruntime-node, printing the same jsonl rows as
// `edgevae score --format jsonl`.
//
//   node score.mjs -m BUNDLE [--method kl|recon|rel_recon|smooth_recon|elbo|local|defect|combined] [--threshold X]
//                  [--trusted-key KEY.pub ...] FILE...
//
// A bad option value or an unknown option is a usage error (exit 2); a directory, named pipe or device among the
// FILEs is a per-item error (it is never read from, so it cannot hang the program).
//
// With trusted keys (--trusted-key, or EDGEVAE_TRUSTED_KEYS: paths separated by ':') the bundle loads only if one
// of them signed it and nothing changed since, as in `edgevae score --trusted-key`.
// FILE: PNG (any colour type and depth, decoded as Pillow does), PGM/PPM (P2, P3, P5, P6), or raw little-endian float32 (.f32, .raw:
// C*H*W values in [0, 1], channel-major), each of exactly the bundle's size. A tiled bundle takes PNG/PGM/PPM files
// of any size at least one tile large (at most 2^26 pixels) and scores them by tiles as `edgevae score` does.
// Exit status: 0 ok; 1 bundle error;
// 2 some inputs could not be scored.
import { createHash, createPublicKey, verify } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";

import ort from "onnxruntime-node";

import { BundleError, decodePNG, isOutlier, openBundle, preprocess, pValue, rawPublicKey, readPNM, scoreImage, scoreTiled, tiledIsOutlier,
  tiledPValue } from "../web/edgevae-core.js";

class UsageError extends Error {}

const USAGE = "usage: node score.mjs -m BUNDLE [--method M] [--threshold X] [--trusted-key KEY.pub ...] FILE...";

// Options as edgevae's command line takes them; a bad value or an unknown option is a usage error (exit 2).
function parseArgs(argv) {
  const args = { bundle: null, method: null, threshold: null, keys: [], files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if ((a === "-m" || a === "--model") && i + 1 < argv.length) args.bundle = argv[++i];
    else if (a === "--method" && i + 1 < argv.length) args.method = argv[++i];
    else if (a === "--threshold" && i + 1 < argv.length) {
      const text = argv[++i], value = Number(text);
      if (text.trim() === "" || !Number.isFinite(value)) throw new UsageError(`invalid value for '--threshold': ${text} is not a finite number`);
      args.threshold = value;
    } else if (a === "--trusted-key" && i + 1 < argv.length) args.keys.push(argv[++i]);
    else if (a.startsWith("--")) throw new UsageError(`no such option: ${a} (or it needs a value)`);
    else args.files.push(...argv.slice(i)), i = argv.length;
  }
  return args;
}

// A whole regular file: a directory, a named pipe, a socket or a device is refused without reading from it
// (opened non-blocking, so a pipe with no writer cannot hang the program).
function readRegularFile(path) {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory()) throw new Error("a directory, not a file");
    if (!stat.isFile()) throw new Error("not a regular file (a pipe, socket or device)");
    return new Uint8Array(readFileSync(fd));
  } finally {
    closeSync(fd);
  }
}

const KIND = { 1: "grayscale", 3: "colour" };

// What edgevae.runtime says when a file's channel count differs from the model's (the row's "warning" field).
function channelWarning(bundle, channels) {
  if (channels === bundle.channels) return "";
  return `${KIND[channels]} image (${channels} channel${channels > 1 ? "s" : ""}) for a model that takes ` +
    `${bundle.channels} (${KIND[bundle.channels]}): converted with Image.convert('${bundle.channels === 1 ? "L" : "RGB"}')`;
}

// An input file as the model's float32 CHW array, and the conversion warning ("" when none).
async function readInput(bundle, path) {
  const bytes = readRegularFile(path);
  const lower = path.toLowerCase();
  if (lower.endsWith(".f32") || lower.endsWith(".raw")) {
    if (bundle.tiling) throw new Error("a raw float32 file carries no size; a tiled bundle reads PNG, PGM or PPM files");
    const count = bundle.channels * bundle.height * bundle.width;
    if (bytes.byteLength !== 4 * count) {
      throw new Error(`${bytes.byteLength} bytes, expected ${count} float32 values (${bundle.channels}x${bundle.height}x${bundle.width})`);
    }
    const x = new Float32Array(bytes.slice().buffer);
    if (x.some((v) => !(v >= 0 && v <= 1))) throw new Error("values outside [0, 1]");
    return { x, warning: "" };
  }
  if (lower.endsWith(".png")) { // decoded as Pillow does (edgevae-core.js, decodePNG)
    const { pixels, width, height, stride, channels } = await decodePNG(bytes, { expect: bundle.tiling ? null : bundle });
    return { x: preprocess(bundle, pixels, width, height, stride), warning: channelWarning(bundle, channels), height, width };
  }
  const { pixels, width, height, stride } = readPNM(bytes);
  return { x: preprocess(bundle, pixels, width, height, stride), warning: channelWarning(bundle, stride === 3 ? 3 : 1), height, width };
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`error: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (!args.bundle || args.files.length === 0) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const keyPaths = args.keys.length ? args.keys : (process.env.EDGEVAE_TRUSTED_KEYS || "").split(":").filter(Boolean);
  let bundle;
  try {
    const trustedKeys = keyPaths.map((path) => {
      try {
        return rawPublicKey(readFileSync(path, "utf8"));
      } catch (err) {
        throw new BundleError(`${path}: cannot read the key file (${err.message})`);
      }
    });
    const verifyEd25519 = async (raw, signature, payload) => verify(null, payload,
      createPublicKey({ key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(raw)]), format: "der", type: "spki" }),
      signature);
    bundle = await openBundle(ort, async (name) => new Uint8Array(readFileSync(join(args.bundle, name))),
      async (bytes) => createHash("sha256").update(bytes).digest("hex"),
      { method: args.method, sessionOptions: { intraOpNumThreads: 1, graphOptimizationLevel: "all" }, trustedKeys, verifyEd25519 });
  } catch (err) {
    process.stderr.write(`error: ${args.bundle}: ${err.message}\n`);
    return 1;
  }
  let failed = 0;
  for (const path of args.files) {
    try {
      const { x, warning, height, width } = await readInput(bundle, path);
      let row;
      if (bundle.tiling) { // by tiles, against whole calibration images (edgevae.runtime.tiles)
        const { score, tiles } = await scoreTiled(bundle, x, height, width);
        row = { score, p_value: tiledPValue(bundle, score, tiles), outlier: tiledIsOutlier(bundle, score, tiles, args.threshold) };
      } else {
        const { score } = await scoreImage(bundle, x);
        row = { score, p_value: pValue(bundle, score), outlier: isOutlier(bundle, score, args.threshold) };
      }
      if (warning) process.stderr.write(`warning: ${path}: ${warning}\n`);
      process.stdout.write(JSON.stringify({ item: path, method: bundle.method, ...row, ...(warning ? { warning } : {}) }) + "\n");
    } catch (err) {
      if (err instanceof BundleError) throw err;
      failed++;
      const message = `${path}: ${err.message}`;
      process.stderr.write(`error: ${message}\n`);
      process.stdout.write(JSON.stringify({ item: path, method: bundle.method, error: message }) + "\n");
    }
  }
  return failed ? 2 : 0;
}

process.exitCode = await main();

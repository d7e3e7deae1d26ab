#!/usr/bin/env bash
# The main job on the embedded default data: train, export, score normal digits and outliers, generate.
# Outputs go to demo/ (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
edgevae=".venv/bin/edgevae"
out="demo"
mkdir -p "$out"

echo "== 1. train on the 5,000 embedded MNIST digits (4,000 in the training pool)"
"$edgevae" train -o "$out/run"

echo "== 2. export encoder.onnx + decoder.onnx + edgevae.json, checked against PyTorch"
"$edgevae" export "$out/run" -o "$out/bundle" --force

echo "== 3. write held-out test digits and six synthetic outliers as PNG files: five plainly not digits (noise,"
echo "   an inverted digit, a checkerboard, a white square, stripes) and one hard case, two digits blended into one"
echo "   image, which still looks like handwriting: a model of all ten digits may well find it normal"
"$edgevae" samples -o "$out/samples" --per-class 2

echo "== 4. score them (torch-free runtime); higher score = more anomalous"
echo "-- default method (combined: a local score on the anomaly map, smooth_recon and the negative ELBO, joined"
echo "   through their p-values, so it flags unusual digits and images that are not digits at all; docs/scoring.md)"
"$edgevae" score "$out/samples" -m "$out/bundle" --report "$out/report.html" --maps "$out/maps" | tee "$out/scores.txt"

echo "== 5. generate new digits from the prior, and reconstructions"
"$edgevae" generate -m "$out/bundle" -n 64 --seed 0 -o "$out/generated.png"
"$edgevae" reconstruct "$out/samples" -m "$out/bundle" -o "$out/reconstructions.png"
"$edgevae" info "$out/bundle"

echo
echo "outputs: $out/run (checkpoints, metrics.json), $out/bundle (the bundle), $out/scores.txt, $out/maps/ (one"
echo "         image | reconstruction | anomaly map per input), $out/generated.png, $out/reconstructions.png,"
echo "         $out/report.html (open it in a browser)"

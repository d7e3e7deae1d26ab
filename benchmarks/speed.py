"""Speed and memory benchmark: raw onnxruntime vs the edgevae runtime vs PyTorch eager, end-to-end file scoring
against the Pillow decode bound, CLI cold start, streaming memory, FLOPs and edge variants.

Everything is measured side by side in one run on the same weights (a default-architecture model trained for
a few epochs on the embedded digits; speed does not depend on how well it is trained).

Usage:
    python benchmarks/speed.py            # full sizes (10,000 PNG files, 100,000 streamed images), a few minutes
    python benchmarks/speed.py --smoke    # tiny sizes: checks that the benchmark runs

Writes benchmarks/results/speed.json and the speed section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import benchmark_parser, write_section  # noqa: E402  (a sibling script module)
THREADS = os.cpu_count() or 1


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def latency(samples: list[float]) -> dict[str, float]:
    s = np.asarray(samples) * 1e6
    return {"p50_us": float(np.percentile(s, 50)), "p99_us": float(np.percentile(s, 99))}


def throughput(samples: list[float], batch: int) -> float:
    return batch / statistics.median(samples)


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def encoder_flops(cfg: Any) -> int:
    """Multiply-adds x 2 of the encoder's convolutions and linear layers for one image."""
    flops, c_in = 0, cfg.channels
    sizes = cfg.feature_sizes()
    for stage, c_out in enumerate(cfg.widths):
        h, w = sizes[stage + 1]
        flops += 2 * h * w * c_out * c_in * 9
        c_in = c_out
    h, w = sizes[-1]
    flops += 2 * (c_in * h * w * cfg.hidden + cfg.hidden * 2 * cfg.latent_dim)
    return flops


def op_shares(path: Path, feed: dict[str, np.ndarray], threads: int, reps: int, prefix: Path) -> dict[str, float]:
    """Share of a graph's run time per operator type (onnxruntime's profiler, ``reps`` runs on ``threads``
    intra-op threads), largest first."""
    import json as _json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_profiling = threads, 1, True
    opts.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(reps):
        session.run(None, feed)
    totals: dict[str, float] = {}
    for event in _json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"]
    return {k: v / sum(totals.values()) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def int8_profile(bundle: Path, x: np.ndarray, reps: int) -> dict[str, dict[str, dict[str, float]]]:
    """What the int8 encoder spends its time on against the fp32 one: share per operator type at batch 256, on
    one thread and on every core (one call: onnxruntime's own threads)."""
    graphs = {"fp32": bundle / "encoder.onnx", "int8": bundle / "encoder.int8.onnx"}
    return {name: {f"{t} thread(s)": op_shares(path, {"x": x}, t, reps, bundle.parent / f"profile_{name}_{t}")
                   for t in sorted({1, THREADS})} for name, path in graphs.items()}


def decoder_flops(cfg: Any) -> int:
    """Multiply-adds x 2 of the decoder's linear layers and transposed convolutions for one image."""
    sizes = cfg.feature_sizes()
    h, w = sizes[-1]
    flops = 2 * (cfg.latent_dim * cfg.hidden + cfg.hidden * cfg.widths[-1] * h * w)
    c_in = cfg.widths[-1]
    for stage, c_out in enumerate(list(reversed(cfg.widths[:-1])) + [cfg.refine or cfg.channels]):
        h_in, w_in = sizes[-1 - stage]
        flops += 2 * h_in * w_in * c_in * c_out * 9  # every input pixel scatters a 3x3 block per output channel
        c_in = c_out
    if cfg.refine:
        flops += 2 * cfg.height * cfg.width * cfg.refine * cfg.channels * 9
    return flops


def peak_gflops() -> tuple[float, str]:
    """Nominal FP32 peak: cores x clock x FLOPs per cycle (2 FMA units x vector lanes x 2).

    AMD Zen 4 (family 0x19, models 0x10-0x1f and 0x60-0x7f, 0xa0-0xaf) executes 512-bit instructions in two
    256-bit halves on its two FMA pipes, so AVX-512 gives it 32 FLOP/cycle, not 64 (AMD's software optimization
    guide for family 19h, the Zen 4 FPU section). The clock is what /proc/cpuinfo shows, the base clock on the
    virtual machines measured here: cores that run faster (boost) exceed this peak.
    """
    info = Path("/proc/cpuinfo").read_text()
    mhz = float(next(line.split(":")[1] for line in info.splitlines() if line.startswith("cpu MHz")))

    def field(name: str) -> str:
        return next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith(name)), "")

    family, model = field("cpu family"), field("model\t") or field("model ")
    zen4 = (field("vendor_id") == "AuthenticAMD" and family == "25" and model.isdigit()
            and (0x10 <= int(model) <= 0x1F or 0x60 <= int(model) <= 0x7F or 0xA0 <= int(model) <= 0xAF))
    per_cycle = 32 if zen4 else 64 if "avx512f" in info else 32 if "avx2" in info else 16
    why = " (Zen 4: AVX-512 in two 256-bit halves)" if zen4 else ""
    return THREADS * mhz / 1e3 * per_cycle, f"{THREADS} cores x {mhz / 1e3:.2f} GHz x {per_cycle} FLOP/cycle{why}"


def gemm_gflops(threads: int, sizes: tuple[int, ...] = (256, 512, 1024), reps: int = 10) -> float:
    """The FP32 rate onnxruntime's own matrix product (MLAS) reaches on ``threads`` threads: square MatMuls of
    each size, best of ``reps``, the best size's rate. The attainable rate the graphs are compared with."""
    return max(_gemm_gflops(threads, size, reps) for size in sizes)


def _gemm_gflops(threads: int, size: int, reps: int) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {n: rng.random((size, size), dtype=np.float32) for n in "ab"}
    return 2 * size ** 3 / min(timed(lambda: session.run(None, feed), reps)) / 1e9


def int8_formats(encoder: Path, x: np.ndarray, reps: int) -> dict[str, dict[str, float]]:
    """Encoder throughput at batch 256 for onnxruntime's static-quantization layouts and type pairs.

    The shipped int8 variant is QDQ with uint8 activations and per-channel int8 weights, its input
    convolution left in float32; the others are measured to show whether another layout would make int8 pay
    off on this CPU.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgevae.export.variants import input_conv_nodes
    from edgevae.runtime.manifest import ENCODER_INPUT

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{ENCODER_INPUT: x[i:i + 64]} for i in range(0, x.shape[0], 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    def rate(path: Path) -> dict[str, float]:
        out = {}
        for threads in (THREADS, 1):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            out[f"{threads} thread(s)"] = throughput(timed(lambda: session.run(None, {ENCODER_INPUT: x}), reps), x.shape[0])
        return out

    pre = encoder.with_name("encoder.pre.onnx")
    quant_pre_process(str(encoder), str(pre), skip_symbolic_shape=True)
    out = {"fp32": rate(encoder)}
    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    keep_float = input_conv_nodes(onnx.load(str(pre)), ENCODER_INPUT)
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        for act, weight in ((u8, s8), (u8, u8), (s8, s8)):
            for exclude in ([], keep_float) if (act, weight) == (u8, s8) else ([],):
                target = encoder.with_name("encoder.q.onnx")
                quantize_static(str(pre), str(target), Reader(), quant_format=fmt, activation_type=act,
                                weight_type=weight, per_channel=True, nodes_to_exclude=exclude)
                where = ", input convolution in float32" if exclude else ", every layer"
                shipped = " (shipped)" if exclude and fmt == QuantFormat.QDQ else ""
                out[f"{fmt.name} activations {act.name} weights {weight.name}{where}{shipped}"] = rate(target)
    return out


# What a user without edgevae's runtime would write: load the checkpoint in PyTorch, decode PNG files with Pillow in
# batches of 256, score them with the same formulas (edgevae.training.objectives), print one line per file.
PLAIN_TORCH_SCRIPT = """
import sys, os
import numpy as np, torch
from PIL import Image
from edgevae.training.loop import load_checkpoint
from edgevae.training.objectives import score
model = load_checkpoint(sys.argv[1]).model.eval()
target, method = sys.argv[2], sys.argv[3]
files = sorted(os.path.join(target, f) for f in os.listdir(target)) if os.path.isdir(target) else [target]
out = []
with torch.no_grad():
    for s in range(0, len(files), 256):
        batch = np.stack([np.asarray(Image.open(f).convert("L")) for f in files[s:s + 256]])
        x = torch.from_numpy(batch[:, None].astype(np.float32) / 255)
        out += [f"{f},{v:.6g}" for f, v in zip(files[s:s + 256], score(model, x, method).tolist())]
print("\\n".join(out))
"""


def raw_sessions(bundle: Path, threads: int, head: bool = False) -> tuple[Any, ...]:
    """Plain onnxruntime sessions of a bundle's fp32 encoder and decoder with ``threads`` intra-op threads; with
    ``head``, a third: its defect head's (None when the bundle has none)."""
    import onnxruntime as ort

    from edgevae.runtime.manifest import DEFECT_FILE

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1

    def session(graph: str) -> Any:
        return ort.InferenceSession(str(bundle / graph), opts, providers=["CPUExecutionProvider"])

    encoder, decoder = session("encoder.onnx"), session("decoder.onnx")
    if not head:
        return encoder, decoder
    return encoder, decoder, session(DEFECT_FILE) if (bundle / DEFECT_FILE).exists() else None


def batch1_overhead(bundle: Path, x1: np.ndarray, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """What ``Model.raw_scores`` adds to the graph runs it makes, per call at batch 1, for every method.

    One process, one-thread sessions for both sides (``load(..., threads=1)`` and raw onnxruntime sessions of the
    same graphs), measured in alternating blocks of ``reps`` calls, ``rounds`` times; the median per-call time of
    each side and their difference. The raw side replays the graph calls of the method (``method_graphs``) and
    none of the numpy score math, so the difference is the runtime's whole cost beyond the graphs.
    """
    import copy

    from edgevae.runtime import GraphRunner, load

    model = load(bundle, ["CPUExecutionProvider"], threads=1)
    enc, dec = raw_sessions(bundle, 1)
    spec = model.spec

    class Replayed:
        """A session stand-in that answers each call from its first answer: what is left of ``raw_scores`` is
        the runtime's own work (a diagnostic; its difference from the overhead is how much the graph runs
        slow down when that work runs between them)."""

        def __init__(self, session: Any) -> None:
            self.session, self.answers = session, {}

        def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
            key = (tuple(names or ()), tuple((k, v.shape) for k, v in feed.items()))
            if key not in self.answers:
                self.answers[key] = self.session.run(names, feed)
            return self.answers[key]

    own = copy.copy(model)  # the same model over sessions that replay
    own.runner = GraphRunner(Replayed(model.runner.encoder), Replayed(model.runner.decoder),
                             defect=Replayed(model.runner.defect) if model.runner.defect is not None else None)

    out: dict[str, dict[str, float]] = {}
    for method in model.methods:
        graphs = method_graphs(enc, dec, spec, method, model.runner.defect)
        sides = {"runtime": (lambda m=method: model.raw_scores(x1, m)), "graphs": (lambda g=graphs: g(x1)),
                 "own work": (lambda m=method: own.raw_scores(x1, m))}
        per_call: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(rounds):
            for name, fn in sides.items():
                fn()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                per_call[name].append((time.perf_counter() - start) / reps * 1e6)
        runtime_us, graphs_us, own_us = (statistics.median(per_call[k]) for k in ("runtime", "graphs", "own work"))
        out[method] = {"runtime_us": runtime_us, "graphs_us": graphs_us, "overhead_us": runtime_us - graphs_us,
                       "own_work_us": own_us}
    model.close()
    return out


def method_graphs(enc: Any, dec: Any, spec: Any, method: str, defect: Any = None) -> Callable[[np.ndarray], Any]:
    """The graph calls a method makes for a batch, on given onnxruntime sessions, without its numpy score math:
    the encoder; the decoder on the posterior means for the scores that compare with reconstructions; on K codes
    per image for the Monte-Carlo ones; ``combined`` decodes its parts' codes (a one-sample ``elbo`` part beside
    the means, as the runtime does); ``defect`` (and a ``defect`` part) runs the defect head's session."""
    from edgevae.runtime.manifest import DECODER_INPUT, ENCODER_INPUT

    one_pass = ("recon", "rel_recon", "smooth_recon", "local")
    codes = {"elbo": spec.elbo_samples, "too_likely": spec.elbo_samples, "iwae": spec.iwae_samples}.get(method, 0)
    if method == "combined":
        codes = spec.part_elbo_samples if "elbo" in spec.combined_parts else 0
    head = defect is not None and (method == "defect" or (method == "combined" and "defect" in spec.combined_parts))
    means = method in one_pass or (method == "combined" and any(p in one_pass for p in spec.combined_parts))

    def run(x: np.ndarray) -> Any:
        maps = defect.run(None, {"x": x}) if head else None
        if method == "defect":
            return maps
        mu = enc.run(None, {ENCODER_INPUT: x})[0]
        if method == "kl":
            return mu
        t = np.concatenate(([mu] if means else []) + ([np.repeat(mu, codes, axis=0)] if codes else []))
        return dec.run(None, {DECODER_INPUT: t})
    return run


def png_by_method(bundle: Path, folder: Path, images: np.ndarray, exe: str, reps: int,
                  warmup: int = 1) -> dict[str, Any]:
    """Files -> scores for every method, against the lower of the decode bound and the method's compute bound.

    - decode bound: Pillow decoding the files in one thread (the CLI's decode thread); the runtime's own reader
      (``InputContract.read_image``, which reads plain PNGs without Pillow) is measured beside it.
    - compute bound: raw onnxruntime running the method's graphs (``method_graphs``) on the already decoded
      images in batches of 256, the better of one session on every core and one one-thread session per core on
      concurrent halves of each batch; no numpy score math.
    - in process: ``iter_batches`` + ``Model.score`` with the thread plan ``edgevae score`` uses, timed after
      the bundle is loaded (the steady state of a long run).
    - CLI: ``edgevae score FOLDER --method M --format csv``, a new process each time (start-up included).

    Each rate is the best of ``reps`` timed runs after ``warmup`` untimed ones.
    """
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image

    from edgevae.runtime import load, thread_plan
    from edgevae.runtime.inputs import iter_batches

    files = sorted(str(p) for p in folder.iterdir())
    n = len(files)
    cores = os.cpu_count() or 1

    def best(fn: Callable[[], Any]) -> float:
        return n / min(timed(fn, reps, warmup=warmup))

    def pillow() -> None:
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("L"))

    model = load(bundle, ["CPUExecutionProvider"])
    contract = model.contract
    out: dict[str, Any] = {"pillow_decode_per_s": best(pillow),
                           "runtime_reader_per_s": best(lambda: [contract.read_image(f) for f in files]),
                           "methods": {}}

    # the defect head's graph too: the compute bound of `defect` and of a `combined` with a defect part runs it
    whole, ones = raw_sessions(bundle, cores, head=True), [raw_sessions(bundle, 1, head=True) for _ in range(cores)]
    x = images.astype(np.float32)[:, None] / np.float32(255)
    batches = [x[i:i + 256] for i in range(0, n, 256)]
    pool = ThreadPoolExecutor(cores)
    for method in model.methods:
        graphs = method_graphs(*whole[:2], model.spec, method, whole[2])
        sliced = [method_graphs(*s[:2], model.spec, method, s[2]) for s in ones]

        def on_whole() -> None:
            for b in batches:
                graphs(b)

        def on_slices() -> None:
            for b in batches:
                bounds = [len(b) * i // cores for i in range(cores + 1)]
                list(pool.map(lambda i: sliced[i](b[bounds[i]:bounds[i + 1]]), range(cores)))

        compute = max(best(on_whole), best(on_slices))
        plan = thread_plan([str(folder)], method)
        streaming = load(bundle, ["CPUExecutionProvider"], threads=plan.threads, slice_workers=plan.slice_workers)

        def in_process() -> None:
            for batch in iter_batches([str(folder)], streaming.contract, batch_size=256):
                if batch.images is not None:
                    streaming.score(batch.images, method)

        def cli() -> None:
            subprocess.run([exe, "score", str(folder), "-m", str(bundle), "--method", method, "--format", "csv",
                            "-o", str(folder.parent / "out.csv")], check=True, capture_output=True)

        rates = {"compute_bound_per_s": compute, "in_process_per_s": best(in_process), "cli_per_s": best(cli)}
        streaming.close()
        lower = min(out["pillow_decode_per_s"], compute)
        # decoding and compute on the same cores: the time per image is the sum of both (decoding taken to scale
        # perfectly over the cores, a generous assumption), so no pipeline on these cores can pass this rate
        shared = 1.0 / (1.0 / (cores * out["runtime_reader_per_s"]) + 1.0 / compute)
        out["methods"][method] = {**rates, "bound_per_s": lower, "in_process_vs_bound": rates["in_process_per_s"] / lower,
                                  "cli_vs_bound": rates["cli_per_s"] / lower, "shared_cores_ceiling_per_s": shared,
                                  "in_process_vs_ceiling": rates["in_process_per_s"] / shared}
    pool.shutdown()
    model.close()
    return out


def decoder_layouts(cfg: Any, work: Path, rounds: int, reps: int) -> dict[str, Any]:
    """The decoder's transposed convolutions against two other layouts, through onnxruntime at batch 256 with
    one thread, timed in alternating blocks (the same weights where the layout allows):

    - ``transposed``: the shipped decoder (ConvTranspose 3x3, stride 2);
    - ``sub-pixel (exact)``: each transposed convolution rewritten as a 2x2 convolution to its four output phases
      followed by DepthToSpace, which computes the same function (the maximum difference is reported);
    - ``matrix product + Col2Im (exact)``: each transposed convolution as one matrix product of the weights with
      every image's input columns, then Col2Im (``F.fold``) summing the overlapping 3x3 blocks: the same function
      with the product batched over the images, where onnxruntime's ConvTranspose runs one product per image;
    - ``nearest + 3x3 conv``: nearest-neighbour upsampling then a 3x3 convolution (another architecture, which
      would need training; timed with untrained weights, as speed does not depend on them).

    Also the share of decoder time per operator type of the exact layouts (onnxruntime's profiler).
    """
    import copy

    import onnxruntime as ort
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgevae.training.model import VAE

    class SubPixel(nn.Module):
        def __init__(self, t: nn.ConvTranspose2d) -> None:
            super().__init__()
            w = t.weight.detach()  # (c_in, c_out, 3, 3)
            c_out = w.shape[1]
            kernel = torch.zeros(c_out * 4, w.shape[0], 2, 2)
            # output row 2m reads input row m with kernel row 1; row 2m+1 reads m (kernel row 2) and m+1 (row 0)
            taps = {0: [(0, 1)], 1: [(0, 2), (1, 0)]}
            for a in (0, 1):
                for b in (0, 1):
                    for r, kr in taps[a]:
                        for c, kc in taps[b]:
                            kernel[torch.arange(c_out) * 4 + a * 2 + b, :, r, c] = w[:, :, kr, kc].T
            self.conv = nn.Conv2d(w.shape[0], c_out * 4, 2)
            self.conv.weight.data, self.conv.bias.data = kernel, t.bias.detach().repeat_interleave(4)
            self.extra = t.output_padding

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            y = F.pixel_shuffle(self.conv(F.pad(x, (0, 1, 0, 1))), 2)  # (N, C, 2h, 2w)
            return y[..., :2 * h - 1 + self.extra[0], :2 * w - 1 + self.extra[1]]

    class Folded(nn.Module):
        def __init__(self, t: nn.ConvTranspose2d) -> None:
            super().__init__()
            w = t.weight.detach()  # (c_in, c_out, k, k)
            self.weight = nn.Parameter(w.reshape(w.shape[0], -1).T.contiguous())  # (c_out * k * k, c_in)
            self.bias = nn.Parameter(t.bias.detach().reshape(1, -1, 1, 1))
            self.k, self.s, self.p, self.extra = t.kernel_size[0], t.stride[0], t.padding[0], t.output_padding

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c, h, w = x.shape
            cols = torch.matmul(self.weight, x.reshape(n, c, h * w))  # (N, c_out * k * k, h * w)
            size = ((h - 1) * self.s - 2 * self.p + self.k + self.extra[0],
                    (w - 1) * self.s - 2 * self.p + self.k + self.extra[1])
            return F.fold(cols, size, self.k, padding=self.p, stride=self.s) + self.bias

    def relayout(decoder: nn.Module, swap: Callable[[nn.ConvTranspose2d], list[nn.Module]]) -> nn.Module:
        d = copy.deepcopy(decoder)
        d.deconv = nn.Sequential(*[m for layer in d.deconv for m in (
            swap(layer) if isinstance(layer, nn.ConvTranspose2d) else [layer])])
        return d.eval()

    class Logits(nn.Module):
        def __init__(self, d: nn.Module) -> None:
            super().__init__()
            self.d = d

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.d(t)[1]

    torch.manual_seed(0)
    base = VAE(cfg).decoder.eval()
    layouts = {"transposed": base,
               "sub-pixel (exact)": relayout(base, lambda t: [SubPixel(t)]),
               "matrix product + Col2Im (exact)": relayout(base, lambda t: [Folded(t)]),
               "nearest + 3x3 conv": relayout(base, lambda t: [nn.Upsample(scale_factor=2, mode="nearest"),
                                                              nn.Conv2d(t.in_channels, t.out_channels, 3, padding=1)])}
    t = torch.randn(256, cfg.latent_dim)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = {}
    for name, d in layouts.items():
        path = work / f"decoder_{len(sessions)}.onnx"
        torch.onnx.export(Logits(d).eval(), (t,), str(path), dynamo=True, input_names=["t"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096)},))
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"t": t.numpy()}
    ref = sessions["transposed"].run(None, feed)[0]
    out: dict[str, Any] = {"sub_pixel_max_abs_diff": float(np.abs(sessions["sub-pixel (exact)"].run(None, feed)[0] - ref).max()),
                           "col2im_max_abs_diff": float(np.abs(
                               sessions["matrix product + Col2Im (exact)"].run(None, feed)[0] - ref).max()),
                           "rates": {n: [] for n in sessions}}
    for _ in range(rounds):
        for name, sess in sessions.items():
            sess.run(None, feed)
            start = time.perf_counter()
            for _ in range(reps):
                sess.run(None, feed)
            out["rates"][name].append(256 * reps / (time.perf_counter() - start))
    out["images_per_s"] = {n: statistics.median(r) for n, r in out["rates"].items()}
    out["op_share"] = {name: op_shares(work / f"decoder_{list(sessions).index(name)}.onnx", feed, 1, reps,
                                       work / "profile")
                       for name in ("transposed", "sub-pixel (exact)", "matrix product + Col2Im (exact)")}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = benchmark_parser(__doc__ or "", "speed").parse_args(argv)
    n_files, n_stream, reps1, reps256 = (200, 2000, 20, 3) if args.smoke else (10_000, 100_000, 300, 20)

    import onnxruntime as ort
    import torch

    from edgevae.export import ExportConfig, export_bundle
    from edgevae.runtime import load
    from edgevae.runtime.inputs import iter_batches
    from edgevae.runtime.manifest import DECODER_INPUT, ENCODER_INPUT
    from edgevae.runtime.scores import log_likelihood, prior_noise
    from edgevae.training import DataSpec, ModelConfig, TrainConfig, load_checkpoint, train
    from edgevae.training.data import embedded_split

    torch.set_num_threads(THREADS)
    report: dict[str, Any] = {"machine": f"{platform.machine()}, Python {platform.python_version()}, {THREADS} cores",
                              "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "threads": THREADS}
    with tempfile.TemporaryDirectory(prefix="edgevae-speed-") as tmp:
        work = Path(tmp)
        cfg = ModelConfig().resolved()
        smoke_head = {"defect_steps": 20} if args.smoke else {}  # a smoke run's head: runs every path, measures nothing
        train(DataSpec(), work / "run", cfg, TrainConfig(epochs=1 if args.smoke else 3, **smoke_head))
        variants = ("int8", "fp16")
        export_bundle(work / "run", work / "bundle", ExportConfig(elbo_samples=1, iwae_samples=8, variants=variants))
        model = load(work / "bundle", ["CPUExecutionProvider"])
        torch_model = load_checkpoint(work / "run").model.eval()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        raw_enc = ort.InferenceSession(str(work / "bundle" / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        raw_dec = ort.InferenceSession(str(work / "bundle" / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        x_u8, _ = embedded_split("test")
        x256 = (x_u8[:256].astype(np.float32) / 255)[:, None]
        x1 = x256[:1]
        eps1 = prior_noise(1, cfg.latent_dim, 0)

        def raw_paths(x: np.ndarray) -> dict[str, Callable[[], Any]]:
            def kl() -> Any:
                return raw_enc.run(None, {ENCODER_INPUT: x})[2]

            def recon() -> Any:
                mu = raw_enc.run(None, {ENCODER_INPUT: x})[0]
                mean = raw_dec.run(["x_mean"], {DECODER_INPUT: mu})[0]
                return np.square(x - mean).reshape(len(x), -1).sum(1)

            def elbo() -> Any:
                mu, logvar, klv = raw_enc.run(None, {ENCODER_INPUT: x})
                t = mu + np.exp(0.5 * logvar) * eps1
                mean, logits = raw_dec.run(None, {DECODER_INPUT: t})
                return klv - log_likelihood(x, "bernoulli", mean, logits)

            def generate() -> Any:
                t = np.random.default_rng(0).standard_normal((len(x), cfg.latent_dim), dtype=np.float32)
                return raw_dec.run(["x_mean"], {DECODER_INPUT: t})[0]

            return {"kl": kl, "elbo_k1": elbo, "recon": recon, "generate": generate}

        def api_paths(x: np.ndarray) -> dict[str, Callable[[], Any]]:
            return {"kl": lambda: model.raw_scores(x, "kl"), "elbo_k1": lambda: model.raw_scores(x, "elbo", samples=1),
                    "recon": lambda: model.raw_scores(x, "recon"), "generate": lambda: model.generate(len(x), seed=0)}

        def torch_paths(x: np.ndarray) -> dict[str, Callable[[], Any]]:
            from edgevae.training.objectives import score

            xt = torch.from_numpy(x)
            e = torch.from_numpy(eps1.copy())

            def gen() -> Any:
                with torch.no_grad():
                    return torch_model.decode(torch.randn(len(x), cfg.latent_dim))[0]

            return {"kl": lambda: score(torch_model, xt, "kl"), "elbo_k1": lambda: score(torch_model, xt, "elbo", e),
                    "recon": lambda: score(torch_model, xt, "recon"), "generate": gen}

        paths: dict[str, Any] = {}
        for name, maker in (("onnxruntime (raw)", raw_paths), ("edgevae.runtime", api_paths), ("PyTorch eager", torch_paths)):
            one, big = maker(x1), maker(x256)
            paths[name] = {p: {**latency(timed(one[p], reps1)), "batch256_per_s": throughput(timed(big[p], reps256), 256)}
                           for p in one}
        report["paths"] = paths

        # encoder variants at batch 256
        def encoder_rates(bundle: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
            """Each variant's encoder (kl) throughput with all cores and with one thread, measured in alternating
            rounds (a block of calls per model and round; the median over rounds): a model measured once, right
            after loading or after another model's threads, varied by up to 1.8x between runs."""
            models = {(v, t): load(bundle, ["CPUExecutionProvider"], variant=v, threads=t) for v in names for t in (None, 1)}
            rates: dict[tuple[str, int | None], list[float]] = {k: [] for k in models}
            for _ in range(2 if args.smoke else 5):
                for key, m in models.items():
                    rates[key].append(throughput(timed(lambda m=m: m.kl(x256), reps256), 256))
            out = {}
            for v in names:
                man = models[(v, None)].manifest
                out[v] = {"encoder_batch256_per_s": statistics.median(rates[(v, None)]),
                          "encoder_batch256_per_s_1thread": statistics.median(rates[(v, 1)]),
                          "bytes": sum(man.files[f]["bytes"] for f in (
                              ("encoder.onnx", "decoder.onnx") if v == "fp32" else
                              (man.variants[v].encoder, man.variants[v].decoder)))}
                if v != "fp32":
                    out[v]["check_auroc"] = man.variants[v].raw["check_auroc"]
            for m in models.values():
                m.close()
            return out

        report["variants"] = encoder_rates(work / "bundle", ("fp32",) + variants)

        # the same with ReLU between layers: ReLU folds into int8 convolutions, SiLU becomes QLinearSigmoid + Mul
        relu_cfg = ModelConfig(activation="relu").resolved()
        train(DataSpec(), work / "run_relu", relu_cfg, TrainConfig(epochs=1 if args.smoke else 3, **smoke_head))
        export_bundle(work / "run_relu", work / "bundle_relu", ExportConfig(elbo_samples=1, iwae_samples=8,
                                                                            variants=("int8",)))
        report["variants_relu"] = encoder_rates(work / "bundle_relu", ("fp32", "int8"))
        report["int8_formats"] = int8_formats(work / "bundle" / "encoder.onnx", x256, reps256)
        report["int8_profile"] = int8_profile(work / "bundle", x256, reps256)
        report["batch1_overhead"] = batch1_overhead(work / "bundle", x1, 3 if args.smoke else 9, 20 if args.smoke else 300)
        report["decoder_layouts"] = decoder_layouts(cfg, work, 2 if args.smoke else 7, 2 if args.smoke else 10)

        # FLOPs and fraction of peak
        fl = encoder_flops(cfg)
        peak, how = peak_gflops()
        achieved = fl * paths["onnxruntime (raw)"]["kl"]["batch256_per_s"] / 1e9
        runtime_gflops = fl * paths["edgevae.runtime"]["kl"]["batch256_per_s"] / 1e9
        report["flops"] = {"encoder_flops_per_image": fl, "peak_gflops": peak, "peak_rule": how,
                           "decoder_flops_per_image": decoder_flops(cfg),
                           "gemm_gflops": {str(n): gemm_gflops(n) for n in sorted({1, THREADS})},
                           "achieved_gflops_batch256": achieved, "fraction_of_peak": achieved / peak,
                           "runtime_gflops_batch256": runtime_gflops, "runtime_fraction_of_peak": runtime_gflops / peak}

        # files: edgevae score vs Pillow decode bound vs PyTorch
        folder = work / "png"
        folder.mkdir()
        from PIL import Image

        for i in range(n_files):
            Image.fromarray(x_u8[i % len(x_u8)]).save(folder / f"{i:05d}.png")
        files = sorted(str(p) for p in folder.iterdir())
        exe = str(Path(sys.executable).with_name("edgevae"))

        def torch_files() -> None:
            from edgevae.training.objectives import score

            for s in range(0, len(files), 256):
                arr = []
                for f in files[s:s + 256]:
                    with Image.open(f) as im:
                        arr.append(np.asarray(im.convert("L")))
                score(torch_model, torch.from_numpy(np.stack(arr)[:, None].astype(np.float32) / 255), "kl")

        script = work / "torch_score.py"
        script.write_text(PLAIN_TORCH_SCRIPT)

        def torch_script(target: str, method: str) -> list[str]:
            return [sys.executable, str(script), str(work / "run" / "best.pt"), target, method]

        def run_cmd(cmd: list[str]) -> Callable[[], None]:
            return lambda: subprocess.run(cmd, check=True, capture_output=True) and None

        report["n_files"] = n_files
        report["png_by_method"] = png_by_method(work / "bundle", folder, x_u8[np.arange(n_files) % len(x_u8)], exe,
                                                1 if args.smoke else 3, warmup=0 if args.smoke else 1)
        report["files"] = {k: n_files / statistics.median(timed(fn, 3 if not args.smoke else 1,
                                                                warmup=0 if args.smoke else 1))
                           for k, fn in (("plain PyTorch script, kl (new process, end to end)",
                                          run_cmd(torch_script(str(folder), "kl"))),
                                         ("plain PyTorch script, smooth_recon (new process, end to end)",
                                          run_cmd(torch_script(str(folder), "smooth_recon"))),
                                         ("Pillow decode + PyTorch eager (in process)", torch_files))}
        report["files"]["Pillow decode only (bound)"] = report["png_by_method"]["pillow_decode_per_s"]

        # cold start
        one_png = files[0]
        cold = {
            "edgevae score (one image)": [exe, "score", one_png, "-m", str(work / "bundle"), "--method", "kl"],
            "plain PyTorch script (one image)": torch_script(one_png, "kl"),
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            'python -c "import onnxruntime"': [sys.executable, "-c", "import onnxruntime"],
        }
        report["cold_start_s"] = {}
        for name, cmd in cold.items():
            runs = []
            for _ in range(5 if not args.smoke else 1):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                runs.append(time.perf_counter() - t)
            report["cold_start_s"][name] = statistics.median(runs)

        # streaming memory
        stream = (files * (n_stream // len(files) + 1))[:n_stream]
        marks, seen, base = {}, 0, rss_mb()
        for batch in iter_batches(stream, model.contract, batch_size=256):
            if batch.images is not None:
                model.raw_scores(batch.images, "kl")
            seen += len(batch.names) + len(batch.failures)
            for point in (n_stream // 10, n_stream // 2, n_stream):
                if seen >= point and point not in marks:
                    marks[point] = rss_mb()
        report["streaming"] = {"images": n_stream, "rss_before_mb": base, "rss_mb_at": marks}

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    write_section("speed", markdown(report), Path(args.markdown))
    print(markdown(report))
    return report


def markdown(r: dict[str, Any]) -> str:
    raw, api, pt = (r["paths"][k] for k in ("onnxruntime (raw)", "edgevae.runtime", "PyTorch eager"))
    lines = ["## Speed and memory", "",
             f"Measured by `python benchmarks/speed.py` on {r['machine']}, {r['date']}"
             + (" (smoke sizes: not meaningful)" if r["smoke"] else "") + ". Raw results: `benchmarks/results/speed.json`. "
             "Default architecture (1x28x28, widths 32,64, hidden 256, latent 16, ReLU encoder, SiLU decoder), fp32, CPU "
             "execution provider, "
             f"{r['threads']} threads everywhere. Shared machine: expect noise of 10-20 %.", "",
             "| path | raw ORT p50 / p99 (µs) | edgevae p50 / p99 (µs) | added per call (µs, p50) | PyTorch p50 (µs) | "
             "raw ORT batch 256 (img/s) | edgevae batch 256 (img/s) | edgevae / raw | PyTorch batch 256 (img/s) | "
             "edgevae / PyTorch b256 | edgevae / PyTorch b1 |", "|---" * 11 + "|"]
    for p in raw:
        lines.append(
            f"| {p} | {raw[p]['p50_us']:.0f} / {raw[p]['p99_us']:.0f} | {api[p]['p50_us']:.0f} / {api[p]['p99_us']:.0f} | "
            f"{api[p]['p50_us'] - raw[p]['p50_us']:.0f} | {pt[p]['p50_us']:.0f} | {raw[p]['batch256_per_s']:.0f} | "
            f"{api[p]['batch256_per_s']:.0f} | {api[p]['batch256_per_s'] / raw[p]['batch256_per_s']:.2f} | "
            f"{pt[p]['batch256_per_s']:.0f} | {api[p]['batch256_per_s'] / pt[p]['batch256_per_s']:.2f} | "
            f"{pt[p]['p50_us'] / api[p]['p50_us']:.2f} |")
    f = dict(r["files"])
    bound = f["Pillow decode only (bound)"]
    pm = r.get("png_by_method")
    if pm:
        lines += ["", f"Scoring {r.get('n_files', 10_000):,} PNG files (28x28 grayscale) with every method (`png_by_method`): "
                  "in process (`iter_batches` + `Model.score` with the CLI's thread plan, after loading) and with the "
                  "CLI (a new process each time, start-up included), against the lower of two bounds: Pillow decoding "
                  f"the files in one thread ({pm['pillow_decode_per_s']:.0f} files/s; the runtime's own reader, which "
                  f"reads plain PNGs without Pillow: {pm['runtime_reader_per_s']:.0f} files/s) and the method's compute "
                  "bound (raw onnxruntime running its graphs on the decoded images, batch 256, the better of one "
                  "session on every core and one one-thread session per core; no score math). Best of "
                  f"{2 if r['smoke'] else 3}. The shared-cores ceiling is what decoding (the runtime's reader, "
                  "taken to scale perfectly over the cores) and the compute bound allow together when both need the "
                  "same cores: 1 / (1 / decode + 1 / compute).", "",
                  "| method | compute bound (img/s) | lower bound | shared-cores ceiling | in process (img/s) | vs lower "
                  "bound | vs ceiling | CLI end to end (img/s) | CLI vs lower bound |", "|---" * 9 + "|"]
        lines += [f"| {m} | {v['compute_bound_per_s']:.0f} | {v['bound_per_s']:.0f} | "
                  f"{v['shared_cores_ceiling_per_s']:.0f} | {v['in_process_per_s']:.0f} | "
                  f"{v['in_process_vs_bound']:.2f} | {v['in_process_vs_ceiling']:.2f} | {v['cli_per_s']:.0f} | "
                  f"{v['cli_vs_bound']:.2f} |" for m, v in pm["methods"].items()]
        f.update({f"edgevae score --method {m} (CLI, end to end)": pm["methods"][m]["cli_per_s"]
                  for m in ("kl", "smooth_recon", "combined") if m in pm["methods"]})
    lines += ["", f"Scoring {r.get('n_files', 10_000):,} PNG files end to end (28x28 grayscale; the CLI and the plain PyTorch "
              "script (`PLAIN_TORCH_SCRIPT`: load the checkpoint, decode with Pillow, score in batches of 256) are new "
              "processes each time, so their times include start-up; the Pillow loops run in the benchmark's "
              "process and use the `kl` method):", "",
              "| pipeline | images/s | fraction of decode bound |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {v / bound:.2f} |" for k, v in f.items()]
    lines += ["", "Cold start (wall, median of 5):", "", "| command | seconds |", "|---|---|"]
    lines += [f"| `{k}` | {v:.2f} |" for k, v in r["cold_start_s"].items()]
    s = r["streaming"]
    lines += ["", f"Streaming {s['images']:,} images through `iter_batches` + `raw_scores` (resident memory): "
              f"before {s['rss_before_mb']:.0f} MB; " + ", ".join(f"after {int(k):,}: {v:.0f} MB"
                                                                   for k, v in s["rss_mb_at"].items()) + "."]
    fl = r["flops"]
    runtime_share = (f"; through edgevae.runtime {fl['runtime_gflops_batch256']:.1f} GFLOP/s = "
                     f"{fl['runtime_fraction_of_peak'] * 100:.1f} %" if "runtime_gflops_batch256" in fl else "")
    gemm = fl.get("gemm_gflops", {})
    attainable = (f" onnxruntime's own matrix product (MLAS, square MatMuls of 256, 512 and 1024, the best) reaches "
                  + ", ".join(f"{v:.1f} GFLOP/s on {k} thread(s)" for k, v in gemm.items())
                  + f"; the encoder through edgevae.runtime is at "
                  f"{fl['runtime_gflops_batch256'] / gemm[str(r['threads'])] * 100:.0f} % of that rate."
                  if str(r["threads"]) in gemm and "runtime_gflops_batch256" in fl else "")
    lines += ["", f"Encoder: {fl['encoder_flops_per_image'] / 1e6:.2f} MFLOP per image; at batch 256 raw onnxruntime "
              f"achieves {fl['achieved_gflops_batch256']:.1f} GFLOP/s = {fl['fraction_of_peak'] * 100:.1f} % of the nominal "
              f"FP32 peak {fl['peak_gflops']:.0f} GFLOP/s ({fl['peak_rule']}){runtime_share}. Above 100 % means the "
              f"cores ran faster than the clock /proc/cpuinfo shows (boost).{attainable}", "",
              "Edge variants (encoder `kl` path, batch 256; with all cores and with one onnxruntime thread, as "
              "`edgevae score` runs it beside its decode thread):", "",
              f"| variant | img/s, {r['threads']} threads | vs fp32 | img/s, 1 thread | vs fp32 | bundle graphs (MB) | vs fp32 |",
              "|---|---|---|---|---|---|---|"]
    v32 = r["variants"]["fp32"]
    one = "encoder_batch256_per_s_1thread"
    lines += [f"| {k} | {v['encoder_batch256_per_s']:.0f} | {v['encoder_batch256_per_s'] / v32['encoder_batch256_per_s']:.2f} | "
              f"{v[one]:.0f} | {v[one] / v32[one]:.2f} | "
              f"{v['bytes'] / 1e6:.2f} | {v['bytes'] / v32['bytes']:.2f} |" for k, v in r["variants"].items()]
    vr = r.get("variants_relu")
    if vr:
        lines += ["", "The same default architecture with ReLU instead of SiLU between layers (`--activation relu`; "
                  "trained the same way), whose activations fold into the int8 convolutions:", "",
                  f"| variant | img/s, {r['threads']} threads | vs fp32 | img/s, 1 thread | vs fp32 |", "|---|---|---|---|---|"]
        r32 = vr["fp32"]
        lines += [f"| {k} (ReLU) | {v['encoder_batch256_per_s']:.0f} | "
                  f"{v['encoder_batch256_per_s'] / r32['encoder_batch256_per_s']:.2f} | {v[one]:.0f} | "
                  f"{v[one] / r32[one]:.2f} |" for k, v in vr.items()]
        lines += ["", f"ReLU fp32 against SiLU fp32: {r32['encoder_batch256_per_s'] / v32['encoder_batch256_per_s']:.2f}x "
                  f"({r['threads']} threads), {r32[one] / v32[one]:.2f}x (1 thread)."]
    ip = r.get("int8_profile")
    if ip:
        lines += ["", "Where the encoder's time goes at batch 256 (share per operator type, onnxruntime's profiler, one "
                  "call per batch; `int8_profile`):", "", "| graph | threads | time by operator |", "|---|---|---|"]
        lines += [f"| {g} | {t} | " + ", ".join(f"{k} {v * 100:.0f} %" for k, v in shares.items() if v >= 0.01) + " |"
                  for g, by_threads in ip.items() for t, shares in by_threads.items()]
    q = r.get("int8_formats")
    if q:
        cols = list(q["fp32"])
        lines += ["", "int8 layouts of the encoder (static quantization, per-channel weights, batch 256; the shipped "
                  "variant is QDQ, uint8 activations, int8 weights, with the convolution that reads the image "
                  "left in float32):", "",
                  "| graph | " + " | ".join(f"img/s, {c} | vs fp32" for c in cols) + " |", "|---" * (1 + 2 * len(cols)) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{v[c]:.0f} | {v[c] / q['fp32'][c]:.2f}" for c in cols) + " |" for k, v in q.items()]
    b1 = r.get("batch1_overhead")
    if b1:
        lines += ["", "Batch-1 overhead: `Model.raw_scores` of one image against the graph runs it makes, both on "
                  "one-thread sessions in one process, alternating blocks (`batch1_overhead`). The last column is "
                  "the runtime's own work alone, with every graph call answered from a cache; the added time above "
                  "it is the graph runs slowing down when that work runs between them:", "",
                  "| method | edgevae.runtime (µs) | its graph runs alone (µs) | added by the runtime (µs) | "
                  "its own work alone (µs) |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {v['runtime_us']:.0f} | {v['graphs_us']:.0f} | {v['overhead_us']:.0f} | "
                  f"{v.get('own_work_us', float('nan')):.0f} |" for m, v in b1.items()]
    dl = r.get("decoder_layouts")
    if dl:
        base = dl["images_per_s"]["transposed"]
        dfl = fl.get("decoder_flops_per_image")
        one = gemm.get("1")
        lines += ["", "Decoder layouts (the decoder graph alone, batch 256, one onnxruntime thread, alternating blocks; "
                  + (f"{dfl / 1e6:.2f} MFLOP per image in the transposed layout, so the shipped decoder runs at "
                     f"{dfl * base / 1e9:.1f} GFLOP/s, {dfl * base / 1e9 / one * 100:.0f} % of the one-thread matrix "
                     "product's rate; " if dfl and one else "")
                  + f"the exact rewrites differ from the transposed graph by at most {dl['sub_pixel_max_abs_diff']:.1e} (sub-pixel) and "
                  f"{dl.get('col2im_max_abs_diff', float('nan')):.1e} (Col2Im)):",
                  "", "| decoder layout | img/s | vs transposed | time by operator |", "|---|---|---|---|"]
        for name, rate in dl["images_per_s"].items():
            share = ", ".join(f"{k} {v * 100:.0f} %" for k, v in dl["op_share"].get(name, {}).items() if v >= 0.01)
            lines.append(f"| {name} | {rate:.0f} | {rate / base:.2f} | {share} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

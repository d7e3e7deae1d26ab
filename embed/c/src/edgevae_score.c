/*
 * edgevae-score: score images with an edgevae bundle through onnxruntime's C API, printing the same jsonl rows
 * as `edgevae score --format jsonl`.
 *
 *   edgevae-score -m BUNDLE [--method kl|recon|rel_recon|smooth_recon|elbo|local|defect|combined] [--threshold X] [--threads N]
 *                 [--repeat R] [--trusted-key KEY.pub ...] FILE...
 *
 * With trusted keys (--trusted-key, or EDGEVAE_TRUSTED_KEYS: paths separated by ':') the bundle loads only if one
 * of them signed its manifest and every file the manifest lists is unaltered, as in `edgevae score --trusted-key`.
 * --repeat R scores each input R more times and reports the median time of one score call on stderr (benchmarks).
 * FILE: binary PGM (P5) or PPM (P6) with 8-bit samples, of exactly the bundle's size (no resizing on a device),
 * or raw little-endian float32 (.f32, .raw): C*H*W values in [0, 1], channel-major (CHW). A tiled bundle (the
 * manifest's tiling) takes PGM/PPM files of any size at least one tile large and scores them by tiles as
 * `edgevae score` does: the largest tile score, its p-value and flag against whole calibration images, adjusted
 * for the image's number of tiles (edgevae.runtime.tiles).
 * Everything the scores need comes from the bundle: the input contract, the calibration (threshold, sorted scores,
 * tail), what each method needs (scoring.method_specs: kind, graphs, samples, noise file, map, parts), the noise
 * files, the anomaly-map statistics, the defect head's graph and the combined score's references. The only
 * per-method code here is the maths of the reconstruction scores (RECONSTRUCTION) and of the defect score. Exit status: 0 ok; 1 bundle or setup error; 2 some inputs
 * could not be scored.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inputs.h"
#include "json.h"
#include "manifest.h"
#include "onnxruntime/onnxruntime_c_api.h"
#include "sha256.h"
#include "signature.h"

#define MAX_KEYS 8

#define C_API_VERSION 29

typedef struct {
    scoring s;                 /* what the manifest says (manifest.h) */
    float *map;                /* anomaly-map statistics (2, H, W): per-pixel mean, then spread */
    float *frame_map;          /* a fixed camera's per-position statistics (2, frame H, frame W) */
    float *frame_defect;       /* and its defect head's, when the method reads the head (NULL: position-free) */
    float *align_ref;          /* a fixed camera's alignment reference (C, frame H, frame W); NULL: no alignment */
    float *align_map, *align_defect; /* the aligned statistics (2, frame H, frame W) of frame_map and frame_defect */
    const OrtApi *ort;
    OrtEnv *env;
    OrtSession *encoder, *decoder, *defect;
    OrtMemoryInfo *memory;
} bundle;

static const OrtApi *ORT;

static int ort_ok(OrtStatus *status, char *err) {
    if (!status) return 1;
    snprintf(err, MSG, "onnxruntime: %s", ORT->GetErrorMessage(status));
    ORT->ReleaseStatus(status);
    return 0;
}

/* Files larger than this are refused (a bundle's graphs and an input image are far smaller). */
#define MAX_FILE_BYTES ((size_t)1 << 30)

/* Reads a whole regular file (NUL-terminated; *len excludes the NUL). A directory, a named pipe, a socket or a
   device is refused without reading from it (opened non-blocking, so a pipe with no writer cannot hang the
   program), as is a file above MAX_FILE_BYTES. On failure *why (when given) says why. */
static unsigned char *read_file(const char *path, size_t *len, const char **why) {
    const char *reason = "cannot open it";
    unsigned char *data = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) reason = errno == ENOENT ? "no such file" : "cannot open it";
    else if (fstat(fd, &st) != 0) reason = "cannot read its status";
    else if (S_ISDIR(st.st_mode)) reason = "a directory, not a file";
    else if (!S_ISREG(st.st_mode)) reason = "not a regular file (a pipe, socket or device)";
    else if ((unsigned long long)st.st_size > MAX_FILE_BYTES) reason = "larger than 1 GiB";
    else if (!(data = malloc((size_t)st.st_size + 1))) reason = "out of memory";
    else {
        size_t got = 0;
        ssize_t n = 1;
        while (got < (size_t)st.st_size && (n = read(fd, data + got, (size_t)st.st_size - got)) > 0) got += (size_t)n;
        if (got != (size_t)st.st_size) { free(data); data = NULL; reason = "cannot read it"; }
        else { data[got] = 0; *len = got; }
    }
    if (fd >= 0) close(fd);
    if (!data && why) *why = reason;
    return data;
}

/* Reads BUNDLE/name after checking its sha256 against the manifest's `files`. */
static unsigned char *read_verified(const char *dir, const json *manifest, const char *name, size_t *len, char *err) {
    const char *keys[] = {"files", name, "sha256", NULL};
    const json *expected = json_path(manifest, keys);
    char path[4096], digest[65];
    if (!expected || expected->type != JSON_STRING) { snprintf(err, MSG, "the manifest has no sha256 for %s", name); return NULL; }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    const char *why = "";
    unsigned char *data = read_file(path, len, &why);
    if (!data) { snprintf(err, MSG, "%s: %s; re-export the bundle", path, why); return NULL; }
    sha256_hex(data, *len, digest);
    if (strcmp(digest, expected->string) != 0) {
        snprintf(err, MSG, "%s: sha256 %.16s... does not match the manifest's %.16s...; refusing to load it", path, digest,
                 expected->string);
        free(data);
        return NULL;
    }
    return data;
}


/* The anomaly-map statistics (scoring.map's file, float32 (2, H, W)), checked against its sha256 and size. */
static int load_map(bundle *b, const char *dir, const json *manifest, char *err) {
    size_t len;
    unsigned char *data = read_verified(dir, manifest, b->s.map_file, &len, err);
    if (!data) return 0;
    if (len != (size_t)2 * b->s.height * b->s.width * 4) {
        snprintf(err, MSG, "%s does not hold float32 (2, %d, %d)", b->s.map_file, b->s.height, b->s.width);
        free(data);
        return 0;
    }
    b->map = (float *)data;
    return 1;
}

/* A fixed camera's per-position statistics (tiling.map's or tiling.defect_map's file, float32 (2, frame H,
   frame W)), checked against its sha256 and the frame's size. */
static int load_frame_stats(bundle *b, const char *dir, const json *manifest, const char *file, float **out, char *err) {
    size_t len, pixels = (size_t)b->s.tiling.frame_h * b->s.tiling.frame_w;
    unsigned char *data = read_verified(dir, manifest, file, &len, err);
    if (!data) return 0;
    if (len != 2 * pixels * 4) {
        snprintf(err, MSG, "%s does not hold float32 (2, %d, %d)", file, b->s.tiling.frame_h, b->s.tiling.frame_w);
        free(data);
        return 0;
    }
    *out = (float *)data;
    for (size_t i = 0; i < pixels; i++)
        if (!isfinite((*out)[i]) || !((*out)[pixels + i] > 0) || !isfinite((*out)[pixels + i])) {
            snprintf(err, MSG, "%s holds a mean that is not finite or a spread that is not positive", file);
            return 0;
        }
    return 1;
}

/* A fixed camera's alignment reference (tiling.alignment's file, float32 (C, frame H, frame W), finite), checked
   against its sha256 and size. */
static int load_reference_frame(bundle *b, const char *dir, const json *manifest, char *err) {
    size_t len, values = (size_t)b->s.channels * b->s.tiling.frame_h * b->s.tiling.frame_w;
    unsigned char *data = read_verified(dir, manifest, b->s.tiling.align_file, &len, err);
    if (!data) return 0;
    b->align_ref = (float *)data;
    if (len != values * 4) {
        snprintf(err, MSG, "%s does not hold float32 (%d, %d, %d)", b->s.tiling.align_file, b->s.channels,
                 b->s.tiling.frame_h, b->s.tiling.frame_w);
        return 0;
    }
    for (size_t i = 0; i < values; i++)
        if (!isfinite(b->align_ref[i])) {
            snprintf(err, MSG, "%s holds a value that is not finite", b->s.tiling.align_file);
            return 0;
        }
    return 1;
}

/* Whether the chosen method reads the defect head (it is defect, or a combination with a defect part). */
static int uses_defect(const scoring *s) {
    if (strcmp(s->spec.kind, "defect") == 0) return 1;
    for (int i = 0; strcmp(s->spec.kind, "combination") == 0 && i < s->spec.n_parts; i++)
        if (strcmp(s->part[i].kind, "defect") == 0) return 1;
    return 0;
}

/* A Monte-Carlo method's shared noise: its entry's file, float32 (samples, latent). */
static int load_noise(bundle *b, const char *dir, const json *manifest, method_spec *spec, char *err) {
    size_t len;
    unsigned char *data = read_verified(dir, manifest, spec->noise_file, &len, err);
    if (!data) return 0;
    if (len != (size_t)spec->samples * (size_t)b->s.latent * 4) {
        snprintf(err, MSG, "%s does not hold float32 (%d, %d)", spec->noise_file, spec->samples, b->s.latent);
        free(data);
        return 0;
    }
    spec->noise = (float *)data; /* little-endian float32, as on every device this targets */
    return 1;
}

/* The files the chosen method and its parts read (noise, map statistics); the manifest was read by read_scoring. */
static int load_method(bundle *b, const char *dir, const json *m, char *err) {
    method_spec *used[MAX_PARTS + 1] = {&b->s.spec};
    int n = 1;
    for (int i = 0; strcmp(b->s.spec.kind, "combination") == 0 && i < b->s.spec.n_parts; i++) used[n++] = &b->s.part[i];
    for (int i = 0; i < n; i++)
        if (strcmp(used[i]->kind, "monte_carlo") == 0 && !load_noise(b, dir, m, used[i], err)) return 0;
    const tiling_spec *ts = &b->s.tiling;
    if (b->s.map && ts->positional && !load_frame_stats(b, dir, m, ts->frame_map_file, &b->frame_map, err)) return 0;
    if (ts->positional && ts->frame_defect && uses_defect(&b->s) &&
        !load_frame_stats(b, dir, m, ts->frame_defect_file, &b->frame_defect, err)) return 0;
    if (ts->positional && ts->align_radius && (b->frame_map || b->frame_defect)) {
        if (!load_reference_frame(b, dir, m, err)) return 0;
        if (b->frame_map && !load_frame_stats(b, dir, m, ts->align_map_file, &b->align_map, err)) return 0;
        if (b->frame_defect && ts->align_defect &&
            !load_frame_stats(b, dir, m, ts->align_defect_file, &b->align_defect, err)) return 0;
    }
    return !b->s.map || load_map(b, dir, m, err);
}

static OrtSession *session(bundle *b, const unsigned char *graph, size_t len, int threads, char *err);

/* The defect head's graph (scoring.defect.file), checked against its sha256, and its session. */
static int load_defect(bundle *b, const char *dir, const json *manifest, int threads, char *err) {
    const char *keys[] = {"scoring", "defect", "file", NULL};
    const json *file = json_path(manifest, keys);
    if (!file || file->type != JSON_STRING) {
        snprintf(err, MSG, "the bundle has no defect head (scoring.defect); train with it and export again");
        return 0;
    }
    size_t len;
    unsigned char *data = read_verified(dir, manifest, file->string, &len, err);
    if (!data) return 0;
    b->defect = session(b, data, len, threads, err);
    free(data);
    return b->defect != NULL;
}

typedef struct {
    bundle *b;
    const char *dir;
    const json *manifest;
    const char *name;
    int threads, needed;
    unsigned char *data;
    size_t len;
    OrtSession *session;
    char err[MSG];
} graph_job;

/* Thread bodies: read and verify one graph; make its session. */
static void *read_graph(void *arg) {
    graph_job *job = arg;
    job->data = read_verified(job->dir, job->manifest, job->name, &job->len, job->err);
    return NULL;
}

static void *make_session(void *arg) {
    graph_job *job = arg;
    job->session = session(job->b, job->data, job->len, job->threads, job->err);
    return NULL;
}

static OrtSession *session(bundle *b, const unsigned char *graph, size_t len, int threads, char *err) {
    OrtSessionOptions *options = NULL;
    OrtSession *s = NULL;
    int ok = ort_ok(ORT->CreateSessionOptions(&options), err) &&
             ort_ok(ORT->SetIntraOpNumThreads(options, threads), err) &&
             ort_ok(ORT->SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL), err) &&
             ort_ok(ORT->CreateSessionFromArray(b->env, graph, len, options, &s), err);
    if (options) ORT->ReleaseSessionOptions(options);
    return ok ? s : NULL;
}

/* With trusted keys: the manifest's signature, then every file it lists (graphs of every variant, noise); the
   fp32 graphs are read and checked by open_bundle anyway. */
static int check_signed(const char *dir, const json *m, const trusted_key *keys, int n_keys, char *err) {
    char path[4096];
    size_t len;
    snprintf(path, sizeof path, "%s/edgevae.sig", dir);
    unsigned char *sig = read_file(path, &len, NULL);
    int ok = verify_signature(m, (const char *)sig, sig ? len : 0, keys, n_keys, err, MSG);
    free(sig);
    const json *files = json_get(m, "files");
    for (const json *f = files ? files->child : NULL; ok && f; f = f->next) {
        if (strcmp(f->key, "encoder.onnx") == 0 || strcmp(f->key, "decoder.onnx") == 0) continue;
        unsigned char *data = read_verified(dir, m, f->key, &len, err);
        ok = data != NULL;
        free(data);
    }
    return ok;
}

static int open_bundle(bundle *b, const char *dir, const char *method, int threads, const trusted_key *keys, int n_keys,
                       char *err) {
    char path[4096], perr[256];
    size_t len, enc_len;
    snprintf(path, sizeof path, "%s/edgevae.json", dir);
    const char *why = "";
    unsigned char *text = read_file(path, &len, &why);
    if (!text) { snprintf(err, MSG, "%s: not a bundle (edgevae.json: %s)", dir, why); return 0; }
    json *m = json_parse((const char *)text, len, perr, sizeof perr);
    free(text);
    if (!m) { snprintf(err, MSG, "%s: the manifest is not valid JSON (%s)", path, perr); return 0; }
    int ok = 0;
    if (n_keys > 0 && !check_signed(dir, m, keys, n_keys, err)) goto done;
    if (!read_scoring(m, method, &b->s, err)) {
        char reason[MSG - 512];
        snprintf(reason, sizeof reason, "%s", err);
        snprintf(err, MSG, "%.400s: %s", path, reason);
        goto done;
    }
    if (!load_method(b, dir, m, err)) goto done;
    /* A second thread reads and hashes the decoder while the environment is made, then makes the decoder's
       session while this one reads, hashes and loads the encoder: hashing and session creation are most of a
       cold start, and they overlap on two cores. */
    int decoder = b->s.decoder, defect = b->s.defect, encoder = b->s.encoder;
    graph_job dec = {b, dir, m, "decoder.onnx", threads, decoder, NULL, 0, NULL, ""};
    pthread_t worker;
    int started = pthread_create(&worker, NULL, read_graph, &dec) == 0;
    if (!started) read_graph(&dec);
    ok = ort_ok(ORT->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgevae", &b->env), err);
    if (started) pthread_join(worker, NULL);
    started = ok && dec.data && dec.needed && pthread_create(&worker, NULL, make_session, &dec) == 0;
    if (ok && dec.data && dec.needed && !started) make_session(&dec);
    unsigned char *enc = ok && encoder ? read_verified(dir, m, "encoder.onnx", &enc_len, err) : NULL;
    ok = (!encoder || (enc && (b->encoder = session(b, enc, enc_len, threads, err)))) &&
         ort_ok(ORT->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &b->memory), err);
    if (started) pthread_join(worker, NULL);
    b->decoder = dec.session;
    if (ok && (!dec.data || (dec.needed && !dec.session))) { snprintf(err, MSG, "%s", dec.err); ok = 0; }
    free(enc);
    if (ok && defect) ok = load_defect(b, dir, m, threads, err);
    free(dec.data);
done:
    json_free(m);
    return ok;
}

/* Runs a graph on one float32 input of the given shape; outputs[i] receives a copy of output i (malloc'ed). */
static int run(bundle *b, OrtSession *s, const char *input, float *data, const int64_t *shape, size_t rank,
               const char *const *names, size_t n_out, float **outputs, char *err) {
    size_t count = 1;
    for (size_t i = 0; i < rank; i++) count *= (size_t)shape[i];
    OrtValue *in = NULL, *out[4] = {NULL, NULL, NULL, NULL};
    int ok = ort_ok(ORT->CreateTensorWithDataAsOrtValue(b->memory, data, count * sizeof(float), shape, rank,
                                                        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in), err) &&
             ort_ok(ORT->Run(s, NULL, &input, (const OrtValue *const *)&in, 1, names, n_out, out), err);
    for (size_t i = 0; ok && i < n_out; i++) {
        OrtTensorTypeAndShapeInfo *info;
        size_t elements;
        float *p;
        ok = ort_ok(ORT->GetTensorTypeAndShape(out[i], &info), err);
        if (!ok) break;
        ok = ort_ok(ORT->GetTensorShapeElementCount(info, &elements), err) &&
             ort_ok(ORT->GetTensorMutableData(out[i], (void **)&p), err);
        ORT->ReleaseTensorTypeAndShapeInfo(info);
        if (ok && (outputs[i] = malloc(elements * sizeof(float)))) memcpy(outputs[i], p, elements * sizeof(float));
        else if (ok) { snprintf(err, MSG, "out of memory"); ok = 0; }
    }
    if (in) ORT->ReleaseValue(in);
    for (size_t i = 0; i < n_out; i++) if (out[i]) ORT->ReleaseValue(out[i]);
    return ok;
}

/* What edgevae.runtime says when a file's channel count differs from the model's (the row's "warning" field). */
static void channel_warning(const bundle *b, int channels, char *warning) {
    static const char *kind[4] = {"", "grayscale", "", "colour"};
    if (channels == b->s.channels) return;
    snprintf(warning, MSG, "%s image (%d channel%s) for a model that takes %d (%s): converted with Image.convert('%s')",
             kind[channels], channels, channels > 1 ? "s" : "", b->s.channels, kind[b->s.channels],
             b->s.channels == 1 ? "L" : "RGB");
}

/* An input file (PGM/PPM, or raw float32 by its .f32/.raw name) as float32 CHW in [0, 1] (decode_input).
   Returns NULL with a message in err. */
static float *read_input(const bundle *b, const char *path, char *err, char *warning) {
    size_t len, count = (size_t)b->s.height * (size_t)b->s.width * (size_t)b->s.channels;
    const char *why = "", *dot = strrchr(path, '.');
    unsigned char *data = read_file(path, &len, &why);
    if (!data) { snprintf(err, MSG, "%s: %s", path, why); return NULL; }
    float *x = malloc(count * sizeof(float));
    input_shape shape = {b->s.channels, b->s.height, b->s.width};
    int raw = dot && (strcmp(dot, ".f32") == 0 || strcmp(dot, ".raw") == 0), channels = b->s.channels;
    char why_not[MSG] = "";
    if (!x) snprintf(err, MSG, "out of memory");
    else if (!decode_input(&shape, data, len, raw, x, &channels, why_not, sizeof why_not))
        snprintf(err, MSG, "%s: %s", path, why_not);
    else channel_warning(b, channels, warning);
    free(data);
    if (err[0] != '\0') { free(x); return NULL; }
    return x;
}

/* A tiled bundle's input: a PGM/PPM file at its own size, at least one tile large, as float32 CHW; *h and *w
   receive its size. Returns NULL with a message in err. */
static float *read_tiled_input(const bundle *b, const char *path, int *h, int *w, char *err, char *warning) {
    size_t len;
    const char *why = "", *dot = strrchr(path, '.');
    if (dot && (strcmp(dot, ".f32") == 0 || strcmp(dot, ".raw") == 0)) {
        snprintf(err, MSG, "%s: a raw float32 file carries no size; a tiled bundle reads PGM or PPM files", path);
        return NULL;
    }
    unsigned char *data = read_file(path, &len, &why);
    if (!data) { snprintf(err, MSG, "%s: %s", path, why); return NULL; }
    char why_not[MSG] = "";
    float *x = NULL;
    int channels = b->s.channels;
    if (!input_size(data, len, h, w, why_not, sizeof why_not)) snprintf(err, MSG, "%s: %s", path, why_not);
    else if (*h < b->s.height || *w < b->s.width) /* edgevae.runtime.tiles.tile_starts says the same */
        snprintf(err, MSG, "%s: an image side of %d px is shorter than one tile (%d px); tiled bundles score images at "
                 "least one tile large", path, *h < b->s.height ? *h : *w, *h < b->s.height ? b->s.height : b->s.width);
    else if (!(x = malloc(sizeof(float) * (size_t)b->s.channels * (size_t)*h * (size_t)*w))) snprintf(err, MSG, "out of memory");
    else {
        input_shape shape = {b->s.channels, *h, *w};
        if (!decode_input(&shape, data, len, 0, x, &channels, why_not, sizeof why_not)) snprintf(err, MSG, "%s: %s", path, why_not);
        else channel_warning(b, channels, warning);
    }
    free(data);
    if (err[0] != '\0') { free(x); return NULL; }
    return x;
}

/* One axis of the Gaussian smoothing: out[i] = sum_k g[k] in[i + k - radius], zero beyond the edges. */
static void smooth_axis(const double *in, double *out, int n, int stride, const double *g, int radius) {
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int k = -radius; k <= radius; k++)
            if (i + k >= 0 && i + k < n) s += g[k + radius] * in[(i + k) * stride];
        out[i * stride] = s;
    }
}

/* sq[i] = sum over channels of the Gaussian-smoothed residual (x - mean) squared, per pixel (H*W). */
static void smoothed_square(const bundle *b, const float *x, const float *mean, double sigma, double *sq) {
    int h = b->s.height, w = b->s.width, radius = (int)ceil(4.0 * sigma);
    double *g = malloc(sizeof(double) * (size_t)(2 * radius + 1)), sum = 0;
    double *r = malloc(sizeof(double) * (size_t)(h * w)), *t = malloc(sizeof(double) * (size_t)(h * w));
    for (int k = -radius; k <= radius; k++) sum += g[k + radius] = exp(-0.5 * (k / sigma) * (k / sigma));
    for (int k = 0; k <= 2 * radius; k++) g[k] = (double)(float)(g[k] / sum); /* the runtime's float32 kernel */
    for (int i = 0; i < h * w; i++) sq[i] = 0;
    for (int c = 0; c < b->s.channels; c++) {
        for (int i = 0; i < h * w; i++) r[i] = (double)x[c * h * w + i] - mean[c * h * w + i];
        for (int row = 0; row < h; row++) smooth_axis(r + row * w, t + row * w, w, 1, g, radius);
        for (int col = 0; col < w; col++) smooth_axis(t + col, r + col, h, w, g, radius);
        for (int i = 0; i < h * w; i++) sq[i] += r[i] * r[i];
    }
    free(g); free(r); free(t);
}

static double smoothed_energy(const bundle *b, const float *x, const float *mean) {
    int n = b->s.height * b->s.width;
    double *sq = malloc(sizeof(double) * (size_t)n), total = 0, energy = 0;
    smoothed_square(b, x, mean, b->s.sigma, sq);
    for (int i = 0; i < n; i++) total += sq[i];
    for (int i = 0; i < b->s.channels * n; i++) energy += (double)x[i] * x[i] + (double)mean[i] * mean[i];
    free(sq);
    return total / (energy + 1.0);
}

/* local: the anomaly map (smoothed residual magnitude, standardised per pixel), then the mean of its top_k. */
/* Rearranges a[0..n) so that its k largest values come first (in no particular order): quickselect with a
   median-of-three pivot, O(n) on average, where a full sort was O(n log n) per image. */
static void select_largest(double *a, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        double x = a[lo], y = a[mid], z = a[hi], pivot; /* the median of the three */
        if ((x <= y) == (y <= z)) pivot = y;
        else if ((y <= x) == (x <= z)) pivot = x;
        else pivot = z;
        int i = lo, j = hi;
        while (i <= j) { /* larger values to the left */
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { double t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

static double local_score(const bundle *b, const float *x, const float *mean) {
    int n = b->s.height * b->s.width;
    double *m = malloc(sizeof(double) * (size_t)n), total = 0;
    smoothed_square(b, x, mean, b->s.map_sigma, m);
    for (int i = 0; i < n; i++) m[i] = ((double)(float)sqrt(m[i]) - b->map[i]) / b->map[n + i];
    select_largest(m, n, b->s.top_k); /* the top_k largest first, in no order: a selection, not a sort */
    for (int i = 0; i < b->s.top_k; i++) total += m[i];
    free(m);
    return total / b->s.top_k;
}

/* defect: the largest mean of the defect head's logits (H, W) over a window x window square (clipped to the
   image), summed in double through an integral image as edgevae.runtime.maps.defect_score does. */
static double window_max_mean(const float *z, int h, int w, int window, double *integral) {
    int kh = window < h ? window : h, kw = window < w ? window : w;
    double best = -INFINITY;
    for (int j = 0; j <= w; j++) integral[j] = 0.0;
    for (int i = 1; i <= h; i++) {
        double row = 0.0;
        integral[(size_t)i * (w + 1)] = 0.0;
        for (int j = 1; j <= w; j++) {
            row += z[(size_t)(i - 1) * w + (j - 1)];
            integral[(size_t)i * (w + 1) + j] = integral[(size_t)(i - 1) * (w + 1) + j] + row;
        }
    }
    for (int i = kh; i <= h; i++)
        for (int j = kw; j <= w; j++) {
            double sum = integral[(size_t)i * (w + 1) + j] - integral[(size_t)(i - kh) * (w + 1) + j] -
                         integral[(size_t)i * (w + 1) + j - kw] + integral[(size_t)(i - kh) * (w + 1) + j - kw];
            if (sum > best) best = sum;
        }
    return best / ((double)kh * kw);
}

static int defect_score(bundle *b, const method_spec *spec, float *x, double *out, char *err) {
    const char *names[] = {"defect_logits"};
    int64_t shape[4] = {1, b->s.channels, b->s.height, b->s.width};
    float *logits = NULL;
    double *integral = malloc(sizeof(double) * (size_t)(b->s.height + 1) * (size_t)(b->s.width + 1));
    int ok = integral && run(b, b->defect, "x", x, shape, 4, names, 1, &logits, err);
    if (!integral) snprintf(err, MSG, "out of memory");
    if (ok) *out = (float)window_max_mean(logits, b->s.height, b->s.width, spec->window, integral);
    free(logits); free(integral);
    return ok;
}

static double log_likelihood(const bundle *b, const float *x, const float *mean, const float *param) {
    size_t count = (size_t)b->s.channels * b->s.height * b->s.width;
    double ll = 0, sq = 0;
    for (size_t i = 0; i < count; i++) {
        if (b->s.bernoulli) { double l = param[i]; ll += x[i] * l - (fmax(l, 0.0) + log1p(exp(-fabs(l)))); }
        else sq += ((double)x[i] - mean[i]) * ((double)x[i] - mean[i]);
    }
    if (b->s.bernoulli) return ll;
    return -0.5 * sq * exp(-(double)param[0]) - 0.5 * (double)count * ((double)param[0] + log(2.0 * M_PI));
}

typedef double (*reconstruction_score)(bundle *b, const float *x, const float *mean, double sq, double energy);
static double recon_score(bundle *b, const float *x, const float *mean, double sq, double energy) {
    (void)b; (void)x; (void)mean; (void)energy;
    return sq;
}
static double rel_recon_score(bundle *b, const float *x, const float *mean, double sq, double energy) {
    (void)b; (void)x; (void)mean;
    return sq / energy;
}
static double smooth_recon_score(bundle *b, const float *x, const float *mean, double sq, double energy) {
    (void)sq; (void)energy;
    return smoothed_energy(b, x, mean);
}
static double local_method_score(bundle *b, const float *x, const float *mean, double sq, double energy) {
    (void)sq; (void)energy;
    return local_score(b, x, mean);
}
/* The reconstruction scores' maths: the twins of the registry's numpy functions. */
static const struct { const char *name; reconstruction_score score; } RECONSTRUCTION[] = {
    {"recon", recon_score}, {"rel_recon", rel_recon_score}, {"smooth_recon", smooth_recon_score},
    {"local", local_method_score},
};

/* The codes a method decodes for one image: k of them, written to t (k * latent floats). A reconstruction score
   decodes the posterior mean; a Monte-Carlo one mu + exp(logvar / 2) * eps for the first k rows of its noise. */
static int64_t codes_for(const bundle *b, const method_spec *spec, float **enc, int samples, float *t) {
    int mc = strcmp(spec->kind, "monte_carlo") == 0;
    int64_t k = mc ? (samples < spec->samples ? samples : spec->samples) : 1;
    for (int64_t s = 0; t && s < k; s++)
        for (int j = 0; j < b->s.latent; j++)
            t[s * b->s.latent + j] = mc ? enc[0][j] + expf(0.5f * enc[1][j]) * spec->noise[s * b->s.latent + j] : enc[0][j];
    return k;
}

/* A method's score from its k decoded codes (mean and likelihood parameter of the first of them). */
static int score_decoded(bundle *b, const method_spec *spec, const float *x, float **enc, int64_t k, const float *mean,
                         const float *param, double *out, char *err) {
    size_t count = (size_t)b->s.channels * b->s.height * b->s.width;
    if (strcmp(spec->kind, "monte_carlo") == 0) {
        double ll = 0;
        for (int64_t s = 0; s < k; s++)
            ll += log_likelihood(b, x, mean + s * count, param + (b->s.bernoulli ? s * count : (size_t)s));
        *out = (float)(enc[2][0] - ll / (double)k); /* scores are float32, as in the Python runtime */
        if (spec->negate) *out = -*out;
        return 1;
    }
    double sq = 0, energy = 1;
    for (size_t i = 0; i < count; i++) {
        sq += ((double)x[i] - mean[i]) * ((double)x[i] - mean[i]);
        energy += (double)x[i] * x[i] + (double)mean[i] * mean[i];
    }
    for (size_t i = 0; i < sizeof RECONSTRUCTION / sizeof RECONSTRUCTION[0]; i++)
        if (strcmp(spec->name, RECONSTRUCTION[i].name) == 0) {
            *out = (float)RECONSTRUCTION[i].score(b, x, mean, sq, energy);
            return 1;
        }
    snprintf(err, MSG, "method %s is not implemented here", spec->name);
    return 0;
}

/* Decodes n codes (n * latent floats): dec[0] the means, dec[1] the likelihood parameters (malloc'ed). */
static int decode_codes(bundle *b, float *t, int64_t n, float **dec, char *err) {
    const char *dec_out[] = {"x_mean", b->s.bernoulli ? "x_logits" : "x_logvar"};
    int64_t tshape[2] = {n, b->s.latent};
    return run(b, b->decoder, "t", t, tshape, 2, dec_out, 2, dec, err);
}

/* The score of one method (not a combination) for one image, given its encoder outputs. */
static int method_score(bundle *b, const method_spec *spec, float *x, float **enc, int samples, double *out, char *err) {
    if (strcmp(spec->kind, "encoder") == 0) { *out = (float)enc[2][0]; return 1; }
    float *dec[2] = {NULL, NULL}, *t = malloc(sizeof(float) * (size_t)((samples > 1 ? samples : 1) * b->s.latent));
    int64_t k = codes_for(b, spec, enc, samples, t);
    int ok = t && decode_codes(b, t, k, dec, err) && score_decoded(b, spec, x, enc, k, dec[0], dec[1], out, err);
    if (!t) snprintf(err, MSG, "out of memory");
    free(dec[0]); free(dec[1]); free(t);
    return ok;
}

/* The parts of a combination from one decoder call, as the Python runtime shares its pass: the reconstruction
   parts share the posterior mean, and the Monte-Carlo parts' codes follow it in the same batch. With skip_defect,
   defect parts are left to the caller (a fixed camera reads them from the whole frame); with mean_out, a copy of the
   decoded posterior mean (malloc'ed) when a part decoded it, else NULL. */
static int combination_parts(bundle *b, float *x, float **enc, double *part_scores, int skip_defect, float **mean_out,
                             char *err) {
    int64_t first[MAX_PARTS], k[MAX_PARTS], total = 0, mean_at = -1;
    size_t count = (size_t)b->s.channels * b->s.height * b->s.width;
    int max_codes = 1;
    for (int i = 0; i < b->s.spec.n_parts; i++) max_codes += b->s.spec.part_samples[i] > 0 ? b->s.spec.part_samples[i] : 1;
    float *dec[2] = {NULL, NULL}, *t = malloc(sizeof(float) * (size_t)max_codes * (size_t)b->s.latent);
    if (!t) { snprintf(err, MSG, "out of memory"); return 0; }
    for (int i = 0; i < b->s.spec.n_parts; i++) {
        const method_spec *part = &b->s.part[i];
        if (strcmp(part->kind, "encoder") == 0 || strcmp(part->kind, "defect") == 0) continue;
        if (strcmp(part->kind, "reconstruction") == 0 && mean_at >= 0) { first[i] = mean_at; k[i] = 1; continue; }
        first[i] = total;
        k[i] = codes_for(b, part, enc, b->s.spec.part_samples[i], t + total * b->s.latent);
        if (strcmp(part->kind, "reconstruction") == 0) mean_at = total;
        total += k[i];
    }
    int ok = total == 0 || decode_codes(b, t, total, dec, err);
    for (int i = 0; ok && i < b->s.spec.n_parts; i++) {
        const method_spec *part = &b->s.part[i];
        if (strcmp(part->kind, "encoder") == 0) { part_scores[i] = (float)enc[2][0]; continue; }
        if (strcmp(part->kind, "defect") == 0) {
            if (!skip_defect) ok = defect_score(b, part, x, &part_scores[i], err);
            continue;
        }
        ok = score_decoded(b, part, x, enc, k[i], dec[0] + (size_t)first[i] * count,
                           dec[1] + (b->s.bernoulli ? (size_t)first[i] * count : (size_t)first[i]), &part_scores[i], err);
    }
    if (ok && mean_out && mean_at >= 0 && (*mean_out = malloc(sizeof(float) * count)))
        memcpy(*mean_out, dec[0] + (size_t)mean_at * count, sizeof(float) * count);
    free(dec[0]); free(dec[1]); free(t);
    return ok;
}

/* The score of one image (1, C, H, W); combined: -ln of the smallest p-value of its parts, each over its share. */
static int score(bundle *b, float *x, double *out, char *err) {
    const char *enc_out[] = {"mu", "logvar", "kl"};
    int64_t shape[4] = {1, b->s.channels, b->s.height, b->s.width};
    float *enc[3] = {NULL, NULL, NULL};
    if (strcmp(b->s.spec.kind, "defect") == 0) return defect_score(b, &b->s.spec, x, out, err); /* no encoder */
    int ok = run(b, b->encoder, "x", x, shape, 4, enc_out, 3, enc, err);
    if (ok && strcmp(b->s.spec.kind, "combination") == 0) {
        double log_p_min = 0.0, parts[MAX_PARTS];
        ok = combination_parts(b, x, enc, parts, 0, NULL, err);
        for (int i = 0; ok && i < b->s.spec.n_parts; i++)
            log_p_min = fmin(log_p_min, log_p_value(&b->s.part_ref[i], parts[i]) - b->s.spec.log_share[i]);
        if (ok) *out = (float)fmin(-log_p_min, 1e30); /* -ln of the smallest p-value over its share, in log space */
    } else if (ok) ok = method_score(b, &b->s.spec, x, enc, b->s.spec.samples, out, err);
    for (int i = 0; i < 3; i++) free(enc[i]);
    return ok;
}

/* Start offsets of the tiles along one side (edgevae.runtime.tiles.tile_starts): every stride, the last one flush
   with the far edge. length >= tile; starts has room for length / stride + 2. */
static int tile_starts(int length, int tile, int stride, int *starts) {
    int n = 0;
    for (int at = 0; at <= length - tile; at += stride) starts[n++] = at;
    if (starts[n - 1] != length - tile) starts[n++] = length - tile;
    return n;
}

static void copy_tile(const bundle *b, const float *image, int h, int w, int y, int x, float *tile) {
    for (int c = 0; c < b->s.channels; c++)
        for (int r = 0; r < b->s.height; r++)
            memcpy(tile + ((size_t)c * b->s.height + r) * b->s.width, image + ((size_t)c * h + y + r) * w + x,
                   sizeof(float) * (size_t)b->s.width);
}

/* Adds one tile's map (th x tw; NULL: ones, counting the tile) into a frame's float32 sums at (y, x), as the
   runtime sums them. */
static void add_tile(float *total, int w, int y, int x, int th, int tw, const float *tile_map) {
    for (int r = 0; r < th; r++)
        for (int c = 0; c < tw; c++) total[(size_t)(y + r) * w + x + c] += tile_map ? tile_map[(size_t)r * tw + c] : 1.0f;
}

/* A frame's stitched sums made its map in place: averaged, then standardised per pixel by stats (2, pixels), in
   float32 as the runtime computes it. */
static void standardise_frame(float *total, const float *count, const float *stats, size_t pixels) {
    for (size_t i = 0; i < pixels; i++) {
        float v = total[i] / count[i];
        v = v - stats[i];
        total[i] = v / stats[pixels + i];
    }
}

/* A frame's shift (dy, dx) against the alignment reference (edgevae.runtime.tiles.FrameAlignment.estimate): the
   shift within the radius whose mean squared difference between the frame and the reference moved by it is
   smallest over the interior (radius pixels in from every side), summed in double; shifts within the tie margin
   (relative) of the smallest tie, the zero shift winning a tie, then the first in row-major order. */
static void frame_shift(const bundle *b, const float *image, int h, int w, int *dy_out, int *dx_out) {
    int r = b->s.tiling.align_radius, side = 2 * r + 1;
    double errors[(2 * MAX_ALIGN_RADIUS + 1) * (2 * MAX_ALIGN_RADIUS + 1)] = {0}, low = INFINITY;
    double count = (double)b->s.channels * (double)(h - 2 * r) * (double)(w - 2 * r);
    for (int i = 0; i < side; i++)
        for (int j = 0; j < side; j++) {
            int dy = i - r, dx = j - r;
            double sum = 0.0;
            for (int c = 0; c < b->s.channels; c++)
                for (int y = r; y < h - r; y++) {
                    const float *row = image + ((size_t)c * h + y) * w, *ref = b->align_ref + ((size_t)c * h + y - dy) * w;
                    for (int x = r; x < w - r; x++) {
                        double d = (double)row[x] - (double)ref[x - dx];
                        sum += d * d;
                    }
                }
            errors[i * side + j] = sum / count;
            if (errors[i * side + j] < low) low = errors[i * side + j];
        }
    double limit = low * (1.0 + b->s.tiling.align_tie);
    *dy_out = 0;
    *dx_out = 0;
    if (errors[r * side + r] <= limit) return;
    for (int k = 0; k < side * side; k++)
        if (errors[k] <= limit) {
            *dy_out = k / side - r;
            *dx_out = k % side - r;
            return;
        }
}

/* A frame's stitched sums made its map in place as standardise_frame does, against the aligned statistics moved by
   the frame's shift (read at (clamp(y - dy), clamp(x - dx))), the border band of radius pixels against plain. */
static void standardise_aligned(float *total, const float *count, const float *plain, const float *aligned, int h,
                                int w, int r, int dy, int dx) {
    size_t pixels = (size_t)h * w;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x, at = i;
            const float *stats = plain;
            if (y >= r && y < h - r && x >= r && x < w - r) {
                int yy = y - dy < 0 ? 0 : (y - dy > h - 1 ? h - 1 : y - dy);
                int xx = x - dx < 0 ? 0 : (x - dx > w - 1 ? w - 1 : x - dx);
                at = (size_t)yy * w + xx;
                stats = aligned;
            }
            float v = total[i] / count[i];
            v = v - stats[at];
            total[i] = v / stats[pixels + at];
        }
}

/* A fixed camera's score of one frame (edgevae.runtime.tiles.positional_tile_scores): every tile's residual
   magnitude stitched over the frame (averaged where tiles overlap, in float32 as the runtime sums it) and
   standardised per pixel by the frame's statistics; a tile's local is the mean of the top_k largest values of that
   map under it. With the defect head's per-position statistics, its logits are stitched and standardised alike and
   a tile's defect is the largest window mean of that map inside it. A combination reads its parts (local and defect
   the per-position ones) against tiling.references. The largest tile score is the frame's. */
static int score_positional(bundle *b, const float *image, int h, int w, const int *ys, int ny, const int *xs, int nx,
                            double *out, char *err) {
    const tiling_spec *ts = &b->s.tiling;
    int th = b->s.height, tw = b->s.width, combination = strcmp(b->s.spec.kind, "combination") == 0;
    int local_at = -1, defect_at = -1, window = b->s.spec.window;
    int n_parts = combination ? b->s.spec.n_parts : 0, ok = 1, n = ny * nx;
    int residual = b->frame_map != NULL, defect = b->frame_defect != NULL, encode = residual || combination;
    size_t pixels = (size_t)h * w, tile_pixels = (size_t)th * tw;
    const char *enc_out[] = {"mu", "logvar", "kl"}, *defect_out[] = {"defect_logits"};
    int64_t shape[4] = {1, b->s.channels, th, tw};
    float *total = calloc(pixels, sizeof(float)), *count = calloc(pixels, sizeof(float));
    float *logits_total = defect ? calloc(pixels, sizeof(float)) : NULL;
    float *tile = malloc(sizeof(float) * (size_t)b->s.channels * tile_pixels), *values = malloc(sizeof(float) * tile_pixels);
    double *sq = malloc(sizeof(double) * tile_pixels), *parts = malloc(sizeof(double) * (size_t)(n * (n_parts ? n_parts : 1)));
    double *integral = malloc(sizeof(double) * (size_t)(th + 1) * (size_t)(tw + 1));
    double best = -INFINITY;
    if (!total || !count || (defect && !logits_total) || !tile || !values || !sq || !parts || !integral) {
        snprintf(err, MSG, "out of memory");
        ok = 0;
    }
    for (int i = 0; i < n_parts; i++) {
        if (strcmp(b->s.part[i].name, "local") == 0) local_at = i;
        if (strcmp(b->s.part[i].kind, "defect") == 0) { defect_at = i; window = b->s.part[i].window; }
    }
    for (int k = 0; ok && k < n; k++) {
        int y = ys[k / nx], x = xs[k % nx];
        float *enc[3] = {NULL, NULL, NULL}, *dec[2] = {NULL, NULL}, *logits = NULL;
        copy_tile(b, image, h, w, y, x, tile);
        if (encode) ok = run(b, b->encoder, "x", tile, shape, 4, enc_out, 3, enc, err);
        if (ok && combination)
            ok = combination_parts(b, tile, enc, parts + (size_t)k * n_parts, defect, residual ? &dec[0] : NULL, err);
        /* the posterior mean's reconstruction, unless the parts' pass decoded it */
        if (ok && residual && !dec[0]) ok = decode_codes(b, enc[0], 1, dec, err);
        if (ok && residual) {
            smoothed_square(b, tile, dec[0], ts->frame_sigma, sq);
            for (size_t i = 0; i < tile_pixels; i++) values[i] = (float)sqrt(sq[i]);
            add_tile(total, w, y, x, th, tw, values);
        }
        if (ok && defect) ok = run(b, b->defect, "x", tile, shape, 4, defect_out, 1, &logits, err);
        if (ok && defect) add_tile(logits_total, w, y, x, th, tw, logits);
        if (ok) add_tile(count, w, y, x, th, tw, NULL);
        for (int i = 0; i < 3; i++) free(enc[i]);
        free(dec[0]); free(dec[1]); free(logits);
    }
    if (ok && b->align_ref) { /* aligned: the statistics moved by the frame's shift, the border band as they are */
        int dy, dx, r = ts->align_radius;
        frame_shift(b, image, h, w, &dy, &dx);
        if (residual) standardise_aligned(total, count, b->frame_map, b->align_map, h, w, r, dy, dx);
        if (defect) standardise_aligned(logits_total, count, b->frame_defect,
                                        b->align_defect ? b->align_defect : b->frame_defect, h, w, r, dy, dx);
    } else {
        if (ok && residual) standardise_frame(total, count, b->frame_map, pixels);
        if (ok && defect) standardise_frame(logits_total, count, b->frame_defect, pixels);
    }
    for (int k = 0; ok && k < n; k++) {
        int y = ys[k / nx], x = xs[k % nx];
        double local = 0, defect_score_k = 0, s;
        if (residual) {
            for (int r = 0; r < th; r++)
                for (int c = 0; c < tw; c++) sq[(size_t)r * tw + c] = total[(size_t)(y + r) * w + x + c];
            select_largest(sq, (int)tile_pixels, ts->frame_top_k);
            for (int i = 0; i < ts->frame_top_k; i++) local += sq[i];
            local = (float)(local / ts->frame_top_k);
        }
        if (defect) {
            for (int r = 0; r < th; r++)
                memcpy(values + (size_t)r * tw, logits_total + (size_t)(y + r) * w + x, sizeof(float) * (size_t)tw);
            defect_score_k = (float)window_max_mean(values, th, tw, window, integral);
        }
        if (combination) {
            double log_p_min = 0.0;
            if (local_at >= 0) parts[(size_t)k * n_parts + local_at] = local;
            if (defect_at >= 0 && defect) parts[(size_t)k * n_parts + defect_at] = defect_score_k;
            for (int i = 0; i < n_parts; i++)
                log_p_min = fmin(log_p_min, log_p_value(&b->s.part_ref[i], parts[(size_t)k * n_parts + i])
                                            - b->s.spec.log_share[i]);
            s = (float)fmin(-log_p_min, 1e30);
        } else s = defect && !residual ? defect_score_k : local;
        if (isnan(s) || s > best) best = s;
    }
    *out = best;
    free(total); free(count); free(logits_total); free(tile); free(values); free(sq); free(parts); free(integral);
    return ok;
}

/* A tiled bundle's score of one image (C, h, w): the largest score of its tiles (a NaN tile score makes it NaN, as
   numpy's max does); *tiles receives their number. One tile is copied out at a time. A fixed camera's local and
   combined go through score_positional. */
static int score_tiled(bundle *b, const float *image, int h, int w, double *out, int *tiles, char *err) {
    int th = b->s.height, tw = b->s.width, stride = b->s.tiling.stride, ny, nx, ok = 1;
    int *ys = malloc(sizeof(int) * (size_t)(h / stride + 2)), *xs = malloc(sizeof(int) * (size_t)(w / stride + 2));
    float *tile = malloc(sizeof(float) * (size_t)b->s.channels * (size_t)th * (size_t)tw);
    double best = -INFINITY, s;
    if (!ys || !xs || !tile) { snprintf(err, MSG, "out of memory"); ok = 0; }
    ny = ok ? tile_starts(h, th, stride, ys) : 0;
    nx = ok ? tile_starts(w, tw, stride, xs) : 0;
    if (ok && b->s.tiling.positional && (h != b->s.tiling.frame_h || w != b->s.tiling.frame_w)) {
        snprintf(err, MSG, "this bundle is for a fixed camera: it scores frames of %dx%d px (its statistics are per "
                 "position), got %dx%d; crop or resize frames to the training size", b->s.tiling.frame_h,
                 b->s.tiling.frame_w, h, w);
        ok = 0;
    }
    if (ok && b->s.tiling.positional && (b->frame_map || b->frame_defect)) {
        ok = score_positional(b, image, h, w, ys, ny, xs, nx, out, err);
        *tiles = ny * nx;
        free(ys); free(xs); free(tile);
        return ok;
    }
    for (int i = 0; ok && i < ny; i++)
        for (int j = 0; ok && j < nx; j++) {
            copy_tile(b, image, h, w, ys[i], xs[j], tile);
            ok = score(b, tile, &s, err);
            if (ok && (isnan(s) || s > best)) best = s;
        }
    *tiles = ny * nx;
    *out = best;
    free(ys); free(xs); free(tile);
    return ok;
}

static void close_bundle(bundle *b) {
    if (b->encoder) ORT->ReleaseSession(b->encoder);
    if (b->decoder) ORT->ReleaseSession(b->decoder);
    if (b->defect) ORT->ReleaseSession(b->defect);
    if (b->memory) ORT->ReleaseMemoryInfo(b->memory);
    if (b->env) ORT->ReleaseEnv(b->env);
    free_scoring(&b->s);
    free(b->map);
    free(b->frame_map);
    free(b->frame_defect);
    free(b->align_ref);
    free(b->align_map);
    free(b->align_defect);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median time (microseconds) of `repeat` score calls on one preprocessed image (h x w: by tiles when tiled). */
static double median_score_us(bundle *b, float *x, int h, int w, int repeat, char *err) {
    double *times = malloc(sizeof(double) * (size_t)repeat), s, median;
    int tiles;
    for (int r = 0; times && r < repeat; r++) {
        double started = now_us();
        if (!(b->s.tiling.present ? score_tiled(b, x, h, w, &s, &tiles, err) : score(b, x, &s, err))) { free(times); return NAN; }
        times[r] = now_us() - started;
    }
    if (!times) return NAN;
    qsort(times, (size_t)repeat, sizeof(double), by_value);
    median = times[repeat / 2];
    free(times);
    return median;
}

static void print_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
    putchar('"');
}

/* A whole number in [low, high], or a usage error naming the option (exit 2, as Python's click does). */
static long parse_long(const char *option, const char *text, long low, long high) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < low || v > high) {
        fprintf(stderr, "error: invalid value for '%s': %s is not a whole number in %ld..%ld\n", option, text, low, high);
        exit(2);
    }
    return v;
}

/* A finite number, or a usage error naming the option (exit 2). */
static double parse_double(const char *option, const char *text) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !isfinite(v)) {
        fprintf(stderr, "error: invalid value for '%s': %s is not a finite number\n", option, text);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *method = NULL;
    double threshold = NAN;
    int threads = 1, first = argc, repeat = 0, n_keys = 0;
    const char *key_paths[MAX_KEYS];
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && (strcmp(argv[i], "-m") == 0 || strcmp(argv[i], "--model") == 0)) dir = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--method") == 0) method = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--threshold") == 0) threshold = parse_double("--threshold", argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) threads = (int)parse_long("--threads", argv[++i], 1, 256);
        else if (i + 1 < argc && strcmp(argv[i], "--repeat") == 0) repeat = (int)parse_long("--repeat", argv[++i], 0, 1000000);
        else if (i + 1 < argc && strcmp(argv[i], "--trusted-key") == 0) {
            if (n_keys == MAX_KEYS) { fprintf(stderr, "error: at most %d --trusted-key options\n", MAX_KEYS); return 2; }
            key_paths[n_keys++] = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "error: no such option: %s (or it needs a value)\n", argv[i]);
            return 2;
        } else { first = i; break; }
    }
    if (!dir || first >= argc) {
        fprintf(stderr, "usage: %s -m BUNDLE [--method M] [--threshold X] [--threads N] [--repeat R] "
                "[--trusted-key KEY.pub] FILE...\n", argv[0]);
        return 2;
    }
    char err[MSG] = "", warning[MSG] = "", env_keys[4096] = "";
    bundle b = {0};
    const char *from_env = getenv("EDGEVAE_TRUSTED_KEYS");
    if (n_keys == 0 && from_env) { /* paths separated by ':' */
        snprintf(env_keys, sizeof env_keys, "%s", from_env);
        for (char *p = strtok(env_keys, ":"); p && n_keys < MAX_KEYS; p = strtok(NULL, ":")) key_paths[n_keys++] = p;
    }
    trusted_key keys[MAX_KEYS];
    for (int k = 0; k < n_keys; k++)
        if (!load_trusted_key(key_paths[k], &keys[k], err, MSG)) { fprintf(stderr, "error: %s\n", err); return 1; }
    ORT = OrtGetApiBase()->GetApi(C_API_VERSION);
    if (!ORT) { fprintf(stderr, "error: this onnxruntime library does not serve C API version %d\n", C_API_VERSION); return 1; }
    if (!open_bundle(&b, dir, method, threads, keys, n_keys, err)) {
        fprintf(stderr, "error: %s\n", err);
        close_bundle(&b);
        return 1;
    }
    double thr = isnan(threshold) ? b.s.threshold : threshold;
    int failed = 0;
    const tiling_spec *tiling = &b.s.tiling;
    for (int i = first; i < argc; i++) {
        double s = 0, p = 1;
        int h = b.s.height, w = b.s.width, tiles = 1, outlier = 0;
        err[0] = warning[0] = '\0';
        float *x = tiling->present ? read_tiled_input(&b, argv[i], &h, &w, err, warning) : read_input(&b, argv[i], err, warning);
        int ok = x && (tiling->present ? score_tiled(&b, x, h, w, &s, &tiles, err) : score(&b, x, &s, err));
        if (ok && repeat > 0) fprintf(stderr, "timing: %s median %.1f us per score call over %d calls\n", argv[i],
                                      median_score_us(&b, x, h, w, repeat, err), repeat);
        free(x);
        if (ok && tiling->present) { /* against whole calibration images, adjusted for this image's number of tiles */
            int n0 = tiling->tiles_median ? tiling->tiles_median : tiles;
            double p0 = p_value(&tiling->cal, s);
            p = size_adjusted_p(p0, tiles, n0);
            outlier = !isnan(threshold) ? s > threshold : tiles == n0 ? s > tiling->threshold
                    : p0 < size_adjusted_fpr(tiling->fpr, tiles, n0);
        } else if (ok) {
            p = p_value(&b.s.cal, s);
            outlier = (float)s > (float)thr;
        }
        printf("{\"item\": ");
        print_string(argv[i]);
        printf(", \"method\": \"%s\", ", b.s.method);
        if (ok) {
            printf("\"score\": %.9g, \"p_value\": %.17g, \"outlier\": %s", s, p, outlier ? "true" : "false");
            if (warning[0]) { printf(", \"warning\": "); print_string(warning); fprintf(stderr, "warning: %s: %s\n", argv[i], warning); }
            printf("}\n");
        }
        else { printf("\"error\": "); print_string(err); printf("}\n"); fprintf(stderr, "error: %s\n", err); failed++; }
    }
    close_bundle(&b);
    return failed ? 2 : 0;
}

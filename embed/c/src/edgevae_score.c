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
 * or raw little-endian float32 (.f32, .raw): C*H*W values in [0, 1], channel-major (CHW).
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
#include "onnxruntime/onnxruntime_c_api.h"
#include "sha256.h"
#include "signature.h"

#define MAX_KEYS 8

#define C_API_VERSION 29
#define MSG 8192

typedef struct {
    double start, fraction, shape, scale;
    int present;
} tail_fit;

/* Sorted scores of normal images with an optional tail model: what turns a score into a p-value. */
typedef struct {
    double *scores;
    size_t n;
    tail_fit tail;
    int unbounded;             /* a combined part: read a bounded tail as exponential */
} reference;

#define MAX_PARTS 8

/* What a method needs, from the bundle's scoring.method_specs (or, for older bundles, their older fields). */
typedef struct {
    char name[32], kind[16];   /* kind: encoder, reconstruction, monte_carlo, defect or combination */
    int decoder, defect, samples, map, importance;
    int negate;                /* the score is the negative of what its kind computes (too_likely = -elbo) */
    int window;                /* defect: the side of the square its logits are averaged over */
    char noise_file[128];
    float *noise;              /* a Monte-Carlo method's shared noise (samples, latent) */
    int n_parts;               /* a combination: its parts, the samples each draws in it, their references */
    char parts[MAX_PARTS][32];
    int part_samples[MAX_PARTS];
} method_spec;

typedef struct {
    int channels, height, width, latent;
    int bernoulli;             /* 1: decoder gives x_logits; 0: x_logvar (Gaussian) */
    double sigma;              /* smooth_recon */
    char method[32];
    method_spec spec;          /* the chosen method */
    method_spec part[MAX_PARTS]; /* a combination's parts */
    reference part_ref[MAX_PARTS];
    double threshold;
    reference cal;             /* the method's calibration */
    float *map;                /* anomaly-map statistics (2, H, W): per-pixel mean, then spread */
    double map_sigma;
    int top_k;
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

static double number(const json *root, const char *const *keys, double fallback) {
    const json *v = json_path(root, keys);
    return v && v->type == JSON_NUMBER ? v->number : fallback;
}

/* {"scores": [sorted...], "tail": {...}?} -> reference; 0 with a message when malformed. */
static int load_reference(const json *obj, reference *r, const char *what, char *err) {
    const json *scores = json_get(obj, "scores"), *tail = json_get(obj, "tail");
    if (!scores || scores->type != JSON_ARRAY || scores->count < 2) {
        snprintf(err, MSG, "%s has no sorted scores", what);
        return 0;
    }
    r->scores = malloc(scores->count * sizeof(double));
    if (!r->scores) { snprintf(err, MSG, "out of memory"); return 0; }
    for (const json *s = scores->child; s; s = s->next) r->scores[r->n++] = s->number;
    for (size_t i = 1; i < r->n; i++)
        if (r->scores[i] < r->scores[i - 1]) { snprintf(err, MSG, "%s: scores are not sorted", what); return 0; }
    if (tail && tail->type == JSON_OBJECT) {
        const char *k[][2] = {{"start", NULL}, {"fraction", NULL}, {"shape", NULL}, {"scale", NULL}};
        r->tail = (tail_fit){number(tail, k[0], NAN), number(tail, k[1], NAN), number(tail, k[2], NAN),
                             number(tail, k[3], NAN), 1};
    }
    return 1;
}

static int load_calibration(bundle *b, const json *manifest, char *err) {
    const char *keys[] = {"calibration", "methods", b->method, NULL};
    const json *cal = json_path(manifest, keys);
    if (!cal || !json_get(cal, "threshold")) {
        snprintf(err, MSG, "the bundle does not calibrate method %s", b->method);
        return 0;
    }
    b->threshold = json_get(cal, "threshold")->number;
    return load_reference(cal, &b->cal, "the calibration", err);
}

static int legacy_spec(const json *m, const char *name, method_spec *spec, char *err);

/* A method's entry of scoring.method_specs; bundles from before it get the same entry from their older fields. */
static int load_spec(const json *m, const char *name, method_spec *spec, char *err) {
    const char *keys[] = {"scoring", "method_specs", name, NULL};
    const json *entry = json_path(m, keys), *v;
    memset(spec, 0, sizeof *spec);
    snprintf(spec->name, sizeof spec->name, "%s", name);
    if (!entry) return legacy_spec(m, name, spec, err);
    if (!(v = json_get(entry, "kind")) || v->type != JSON_STRING) { snprintf(err, MSG, "method %s has no kind", name); return 0; }
    snprintf(spec->kind, sizeof spec->kind, "%s", v->string);
    const json *graphs = json_get(entry, "graphs");
    for (const json *g = graphs ? graphs->child : NULL; g; g = g->next) {
        if (g->type == JSON_STRING && strcmp(g->string, "decoder") == 0) spec->decoder = 1;
        if (g->type == JSON_STRING && strcmp(g->string, "defect") == 0) spec->defect = 1;
    }
    spec->window = (v = json_get(entry, "window")) && v->type == JSON_NUMBER ? (int)v->number : 0;
    if (strcmp(spec->kind, "defect") == 0 && (spec->window < 1 || spec->window > 255)) {
        snprintf(err, MSG, "method %s has no window in 1..255", name);
        return 0;
    }
    spec->samples = (v = json_get(entry, "samples")) && v->type == JSON_NUMBER ? (int)v->number : 0;
    spec->map = (v = json_get(entry, "map")) && v->type == JSON_BOOL && v->number != 0;
    spec->importance = (v = json_get(entry, "importance")) && v->type == JSON_BOOL && v->number != 0;
    spec->negate = (v = json_get(entry, "negate")) && v->type == JSON_BOOL && v->number != 0;
    if ((v = json_get(entry, "noise")) && v->type == JSON_STRING) snprintf(spec->noise_file, sizeof spec->noise_file, "%s", v->string);
    const json *parts = json_get(entry, "parts"), *ks = json_get(entry, "part_samples");
    for (const json *p = parts ? parts->child : NULL; p; p = p->next) {
        if (p->type != JSON_STRING || spec->n_parts == MAX_PARTS) { snprintf(err, MSG, "method %s has bad parts", name); return 0; }
        snprintf(spec->parts[spec->n_parts], sizeof spec->parts[0], "%s", p->string);
        const json *k = json_get(ks, p->string);
        spec->part_samples[spec->n_parts++] = k && k->type == JSON_NUMBER ? (int)k->number : -1; /* -1: the part's own */
    }
    return 1;
}

/* The entries of bundles exported before scoring.method_specs, from the fields they carry. */
static int legacy_spec(const json *m, const char *name, method_spec *spec, char *err) {
    const char *nk[] = {"scoring", "noise_files", name, NULL}, *ck[] = {"scoring", "combined", NULL};
    const json *noise = json_path(m, nk), *combined = json_path(m, ck);
    static const char *const recon[] = {"recon", "rel_recon", "smooth_recon", "local"};
    spec->decoder = strcmp(name, "kl") != 0 && strcmp(name, "defect") != 0;
    if (strcmp(name, "kl") == 0) snprintf(spec->kind, sizeof spec->kind, "encoder");
    if (strcmp(name, "defect") == 0) {
        const char *wk[] = {"scoring", "defect_window", NULL};
        snprintf(spec->kind, sizeof spec->kind, "defect");
        spec->defect = 1;
        spec->window = (int)number(m, wk, 5);
    }
    for (int i = 0; i < 4; i++) if (strcmp(name, recon[i]) == 0) snprintf(spec->kind, sizeof spec->kind, "reconstruction");
    spec->map = strcmp(name, "local") == 0;
    if (strcmp(name, "elbo") == 0 || strcmp(name, "iwae") == 0 || strcmp(name, "too_likely") == 0) {
        snprintf(spec->kind, sizeof spec->kind, "monte_carlo");
        spec->importance = strcmp(name, "iwae") == 0;
        spec->negate = strcmp(name, "too_likely") == 0;
        const json *file = json_get(noise, "file"), *shape = json_get(noise, "shape");
        if (file && file->type == JSON_STRING) snprintf(spec->noise_file, sizeof spec->noise_file, "%s", file->string);
        if (shape && shape->child) spec->samples = (int)shape->child->number;
    }
    if (strcmp(name, "combined") == 0 && combined) {
        const char *ek[] = {"elbo_samples", NULL};
        snprintf(spec->kind, sizeof spec->kind, "combination");
        const json *parts = json_get(combined, "parts");
        for (const json *p = parts ? parts->child : NULL; p && spec->n_parts < MAX_PARTS; p = p->next) {
            int i = spec->n_parts++;
            snprintf(spec->parts[i], sizeof spec->parts[0], "%s", p->type == JSON_STRING ? p->string : "");
            int elbo_like = strcmp(spec->parts[i], "elbo") == 0 || strcmp(spec->parts[i], "too_likely") == 0;
            spec->part_samples[i] = elbo_like ? (int)number(combined, ek, 1) : -1;
            if (strcmp(spec->parts[i], "defect") == 0) spec->defect = 1;
        }
    }
    if (!spec->kind[0]) { snprintf(err, MSG, "the bundle does not describe method %s", name); return 0; }
    return 1;
}

/* Whether this program computes a method: the importance-weighted Monte-Carlo score (iwae) is left to Python. */
static int implemented(const method_spec *spec) {
    if (strcmp(spec->kind, "monte_carlo") == 0) return !spec->importance;
    return strcmp(spec->kind, "encoder") == 0 || strcmp(spec->kind, "reconstruction") == 0 ||
           strcmp(spec->kind, "defect") == 0 || strcmp(spec->kind, "combination") == 0;
}

/* A combination's parts: their entries and their references (the combination's calibration's references). */
static int load_parts(bundle *b, const json *manifest, char *err) {
    const char *ref_keys[] = {"calibration", "methods", b->method, "references", NULL};
    const json *refs = json_path(manifest, ref_keys);
    if (b->spec.n_parts < 2 || !refs) {
        snprintf(err, MSG, "the bundle stores no parts for the %s score (it predates them); re-export it", b->method);
        return 0;
    }
    for (int i = 0; i < b->spec.n_parts; i++) {
        method_spec *part = &b->part[i];
        if (!load_spec(manifest, b->spec.parts[i], part, err)) return 0;
        if (strcmp(part->kind, "combination") == 0 || !implemented(part)) {
            snprintf(err, MSG, "the combined part %s is not computed here", part->name);
            return 0;
        }
        if (b->spec.part_samples[i] < 0) b->spec.part_samples[i] = part->samples;
        if (!load_reference(json_get(refs, part->name), &b->part_ref[i], "a combined part's reference", err)) return 0;
        b->part_ref[i].unbounded = 1;
    }
    return 1;
}

static int load_map(bundle *b, const char *dir, const json *manifest, char *err) {
    const char *keys[] = {"scoring", "map", NULL}, *sg[] = {"sigma", NULL}, *tk[] = {"top_k", NULL};
    const json *entry = json_path(manifest, keys), *file = json_get(entry, "file");
    if (!file || file->type != JSON_STRING) {
        snprintf(err, MSG, "the bundle stores no anomaly-map statistics (it predates them); re-export it");
        return 0;
    }
    b->map_sigma = number(entry, sg, 1.0);
    b->top_k = (int)number(entry, tk, 0);
    size_t len;
    unsigned char *data = read_verified(dir, manifest, file->string, &len, err);
    if (!data) return 0;
    if (len != (size_t)2 * b->height * b->width * 4 || b->top_k < 1 || b->top_k > b->height * b->width) {
        snprintf(err, MSG, "%s does not hold float32 (2, %d, %d) with a valid top_k", file->string, b->height, b->width);
        free(data);
        return 0;
    }
    b->map = (float *)data;
    return 1;
}

/* A Monte-Carlo method's shared noise: its entry's file, float32 (samples, latent). */
static int load_noise(bundle *b, const char *dir, const json *manifest, method_spec *spec, char *err) {
    if (!spec->noise_file[0] || spec->samples < 1) {
        snprintf(err, MSG, "the bundle carries no %s noise file (exported before edgevae stored it); re-export it",
                 spec->name);
        return 0;
    }
    size_t len;
    unsigned char *data = read_verified(dir, manifest, spec->noise_file, &len, err);
    if (!data) return 0;
    if (len != (size_t)spec->samples * (size_t)b->latent * 4) {
        snprintf(err, MSG, "%s does not hold float32 (%d, %d)", spec->noise_file, spec->samples, b->latent);
        free(data);
        return 0;
    }
    spec->noise = (float *)data; /* little-endian float32, as on every device this targets */
    return 1;
}

/* The chosen method's entry, its parts, and the files they read (noise, map statistics). */
static int load_method(bundle *b, const char *dir, const json *m, char *err) {
    if (!load_spec(m, b->method, &b->spec, err)) return 0;
    if (!implemented(&b->spec)) {
        snprintf(err, MSG, "method %s is not implemented here (kl, recon, rel_recon, smooth_recon, elbo, local, defect, "
                 "combined)",
                 b->method);
        return 0;
    }
    int combination = strcmp(b->spec.kind, "combination") == 0, map = b->spec.map;
    if (!load_calibration(b, m, err) || (combination && !load_parts(b, m, err))) return 0;
    method_spec *used[MAX_PARTS + 1] = {&b->spec};
    int n = 1;
    for (int i = 0; combination && i < b->spec.n_parts; i++) used[n++] = &b->part[i];
    for (int i = 0; i < n; i++) {
        map |= used[i]->map;
        if (strcmp(used[i]->kind, "monte_carlo") == 0 && !load_noise(b, dir, m, used[i], err)) return 0;
    }
    return !map || load_map(b, dir, m, err);
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
    const char *fmt[] = {"format", NULL}, *ver[] = {"schema_version", NULL}, *ch[] = {"input", "channels", NULL},
               *h[] = {"input", "height", NULL}, *w[] = {"input", "width", NULL}, *d[] = {"latent_dim", NULL},
               *lk[] = {"likelihood", NULL}, *sg[] = {"scoring", "smooth_sigma", NULL},
               *dm[] = {"scoring", "default_method", NULL};
    const json *format = json_path(m, fmt), *likelihood = json_path(m, lk), *deflt = json_path(m, dm);
    int ok = 0;
    if (!format || format->type != JSON_STRING || strcmp(format->string, "edgevae-bundle") != 0 ||
        number(m, ver, 0) != 1 || !likelihood || !deflt) {
        snprintf(err, MSG, "%s: not an edgevae manifest of schema version 1", path);
        goto done;
    }
    if (n_keys > 0 && !check_signed(dir, m, keys, n_keys, err)) goto done;
    b->channels = (int)number(m, ch, 0); b->height = (int)number(m, h, 0); b->width = (int)number(m, w, 0);
    b->latent = (int)number(m, d, 0); b->sigma = number(m, sg, 1.0);
    b->bernoulli = strcmp(likelihood->string, "bernoulli") == 0;
    snprintf(b->method, sizeof b->method, "%s", method ? method : deflt->string);
    if (!load_method(b, dir, m, err)) goto done;
    /* A second thread reads and hashes the decoder while the environment is made, then makes the decoder's
       session while this one reads, hashes and loads the encoder: hashing and session creation are most of a
       cold start, and they overlap on two cores. */
    int decoder = b->spec.decoder, defect = b->spec.defect, encoder = strcmp(b->spec.kind, "defect") != 0;
    for (int i = 0; i < b->spec.n_parts; i++) { decoder |= b->part[i].decoder; defect |= b->part[i].defect; }
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
    if (channels == b->channels) return;
    snprintf(warning, MSG, "%s image (%d channel%s) for a model that takes %d (%s): converted with Image.convert('%s')",
             kind[channels], channels, channels > 1 ? "s" : "", b->channels, kind[b->channels],
             b->channels == 1 ? "L" : "RGB");
}

/* An input file (PGM/PPM, or raw float32 by its .f32/.raw name) as float32 CHW in [0, 1] (decode_input).
   Returns NULL with a message in err. */
static float *read_input(const bundle *b, const char *path, char *err, char *warning) {
    size_t len, count = (size_t)b->height * (size_t)b->width * (size_t)b->channels;
    const char *why = "", *dot = strrchr(path, '.');
    unsigned char *data = read_file(path, &len, &why);
    if (!data) { snprintf(err, MSG, "%s: %s", path, why); return NULL; }
    float *x = malloc(count * sizeof(float));
    input_shape shape = {b->channels, b->height, b->width};
    int raw = dot && (strcmp(dot, ".f32") == 0 || strcmp(dot, ".raw") == 0), channels = b->channels;
    char why_not[MSG] = "";
    if (!x) snprintf(err, MSG, "out of memory");
    else if (!decode_input(&shape, data, len, raw, x, &channels, why_not, sizeof why_not))
        snprintf(err, MSG, "%s: %s", path, why_not);
    else channel_warning(b, channels, warning);
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
    int h = b->height, w = b->width, radius = (int)ceil(4.0 * sigma);
    double *g = malloc(sizeof(double) * (size_t)(2 * radius + 1)), sum = 0;
    double *r = malloc(sizeof(double) * (size_t)(h * w)), *t = malloc(sizeof(double) * (size_t)(h * w));
    for (int k = -radius; k <= radius; k++) sum += g[k + radius] = exp(-0.5 * (k / sigma) * (k / sigma));
    for (int k = 0; k <= 2 * radius; k++) g[k] = (double)(float)(g[k] / sum); /* the runtime's float32 kernel */
    for (int i = 0; i < h * w; i++) sq[i] = 0;
    for (int c = 0; c < b->channels; c++) {
        for (int i = 0; i < h * w; i++) r[i] = (double)x[c * h * w + i] - mean[c * h * w + i];
        for (int row = 0; row < h; row++) smooth_axis(r + row * w, t + row * w, w, 1, g, radius);
        for (int col = 0; col < w; col++) smooth_axis(t + col, r + col, h, w, g, radius);
        for (int i = 0; i < h * w; i++) sq[i] += r[i] * r[i];
    }
    free(g); free(r); free(t);
}

static double smoothed_energy(const bundle *b, const float *x, const float *mean) {
    int n = b->height * b->width;
    double *sq = malloc(sizeof(double) * (size_t)n), total = 0, energy = 0;
    smoothed_square(b, x, mean, b->sigma, sq);
    for (int i = 0; i < n; i++) total += sq[i];
    for (int i = 0; i < b->channels * n; i++) energy += (double)x[i] * x[i] + (double)mean[i] * mean[i];
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
    int n = b->height * b->width;
    double *m = malloc(sizeof(double) * (size_t)n), total = 0;
    smoothed_square(b, x, mean, b->map_sigma, m);
    for (int i = 0; i < n; i++) m[i] = ((double)(float)sqrt(m[i]) - b->map[i]) / b->map[n + i];
    select_largest(m, n, b->top_k); /* the top_k largest first, in no order: a selection, not a sort */
    for (int i = 0; i < b->top_k; i++) total += m[i];
    free(m);
    return total / b->top_k;
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
    int64_t shape[4] = {1, b->channels, b->height, b->width};
    float *logits = NULL;
    double *integral = malloc(sizeof(double) * (size_t)(b->height + 1) * (size_t)(b->width + 1));
    int ok = integral && run(b, b->defect, "x", x, shape, 4, names, 1, &logits, err);
    if (!integral) snprintf(err, MSG, "out of memory");
    if (ok) *out = (float)window_max_mean(logits, b->height, b->width, spec->window, integral);
    free(logits); free(integral);
    return ok;
}

static double log_likelihood(const bundle *b, const float *x, const float *mean, const float *param) {
    size_t count = (size_t)b->channels * b->height * b->width;
    double ll = 0, sq = 0;
    for (size_t i = 0; i < count; i++) {
        if (b->bernoulli) { double l = param[i]; ll += x[i] * l - (fmax(l, 0.0) + log1p(exp(-fabs(l)))); }
        else sq += ((double)x[i] - mean[i]) * ((double)x[i] - mean[i]);
    }
    if (b->bernoulli) return ll;
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
        for (int j = 0; j < b->latent; j++)
            t[s * b->latent + j] = mc ? enc[0][j] + expf(0.5f * enc[1][j]) * spec->noise[s * b->latent + j] : enc[0][j];
    return k;
}

/* A method's score from its k decoded codes (mean and likelihood parameter of the first of them). */
static int score_decoded(bundle *b, const method_spec *spec, const float *x, float **enc, int64_t k, const float *mean,
                         const float *param, double *out, char *err) {
    size_t count = (size_t)b->channels * b->height * b->width;
    if (strcmp(spec->kind, "monte_carlo") == 0) {
        double ll = 0;
        for (int64_t s = 0; s < k; s++)
            ll += log_likelihood(b, x, mean + s * count, param + (b->bernoulli ? s * count : (size_t)s));
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
    const char *dec_out[] = {"x_mean", b->bernoulli ? "x_logits" : "x_logvar"};
    int64_t tshape[2] = {n, b->latent};
    return run(b, b->decoder, "t", t, tshape, 2, dec_out, 2, dec, err);
}

/* The score of one method (not a combination) for one image, given its encoder outputs. */
static int method_score(bundle *b, const method_spec *spec, float *x, float **enc, int samples, double *out, char *err) {
    if (strcmp(spec->kind, "encoder") == 0) { *out = (float)enc[2][0]; return 1; }
    float *dec[2] = {NULL, NULL}, *t = malloc(sizeof(float) * (size_t)((samples > 1 ? samples : 1) * b->latent));
    int64_t k = codes_for(b, spec, enc, samples, t);
    int ok = t && decode_codes(b, t, k, dec, err) && score_decoded(b, spec, x, enc, k, dec[0], dec[1], out, err);
    if (!t) snprintf(err, MSG, "out of memory");
    free(dec[0]); free(dec[1]); free(t);
    return ok;
}

/* The parts of a combination from one decoder call, as the Python runtime shares its pass: the reconstruction
   parts share the posterior mean, and the Monte-Carlo parts' codes follow it in the same batch. */
static int combination_parts(bundle *b, float *x, float **enc, double *part_scores, char *err) {
    int64_t first[MAX_PARTS], k[MAX_PARTS], total = 0, mean_at = -1;
    size_t count = (size_t)b->channels * b->height * b->width;
    int max_codes = 1;
    for (int i = 0; i < b->spec.n_parts; i++) max_codes += b->spec.part_samples[i] > 0 ? b->spec.part_samples[i] : 1;
    float *dec[2] = {NULL, NULL}, *t = malloc(sizeof(float) * (size_t)max_codes * (size_t)b->latent);
    if (!t) { snprintf(err, MSG, "out of memory"); return 0; }
    for (int i = 0; i < b->spec.n_parts; i++) {
        const method_spec *part = &b->part[i];
        if (strcmp(part->kind, "encoder") == 0 || strcmp(part->kind, "defect") == 0) continue;
        if (strcmp(part->kind, "reconstruction") == 0 && mean_at >= 0) { first[i] = mean_at; k[i] = 1; continue; }
        first[i] = total;
        k[i] = codes_for(b, part, enc, b->spec.part_samples[i], t + total * b->latent);
        if (strcmp(part->kind, "reconstruction") == 0) mean_at = total;
        total += k[i];
    }
    int ok = total == 0 || decode_codes(b, t, total, dec, err);
    for (int i = 0; ok && i < b->spec.n_parts; i++) {
        const method_spec *part = &b->part[i];
        if (strcmp(part->kind, "encoder") == 0) { part_scores[i] = (float)enc[2][0]; continue; }
        if (strcmp(part->kind, "defect") == 0) { ok = defect_score(b, part, x, &part_scores[i], err); continue; }
        ok = score_decoded(b, part, x, enc, k[i], dec[0] + (size_t)first[i] * count,
                           dec[1] + (b->bernoulli ? (size_t)first[i] * count : (size_t)first[i]), &part_scores[i], err);
    }
    free(dec[0]); free(dec[1]); free(t);
    return ok;
}

static double log_p_value(const reference *r, double s);

/* The score of one image (1, C, H, W); combined: -ln of the smallest p-value of its parts. */
static int score(bundle *b, float *x, double *out, char *err) {
    const char *enc_out[] = {"mu", "logvar", "kl"};
    int64_t shape[4] = {1, b->channels, b->height, b->width};
    float *enc[3] = {NULL, NULL, NULL};
    if (strcmp(b->spec.kind, "defect") == 0) return defect_score(b, &b->spec, x, out, err); /* no encoder */
    int ok = run(b, b->encoder, "x", x, shape, 4, enc_out, 3, enc, err);
    if (ok && strcmp(b->spec.kind, "combination") == 0) {
        double log_p_min = 0.0, parts[MAX_PARTS];
        ok = combination_parts(b, x, enc, parts, err);
        for (int i = 0; ok && i < b->spec.n_parts; i++) log_p_min = fmin(log_p_min, log_p_value(&b->part_ref[i], parts[i]));
        if (ok) *out = (float)fmin(-log_p_min, 1e30); /* -ln of the smallest p-value, read in log space */
    } else if (ok) ok = method_score(b, &b->spec, x, enc, b->spec.samples, out, err);
    for (int i = 0; i < 3; i++) free(enc[i]);
    return ok;
}

/* First index with scores[i] >= s (n when none). */
static size_t lower_bound(const reference *r, double s) {
    size_t lo = 0, hi = r->n;
    while (lo < hi) { size_t mid = (lo + hi) / 2; if (r->scores[mid] < s) lo = mid + 1; else hi = mid; }
    return lo;
}

/* The interpolated empirical survival curve: (1 + #{scores >= v}) / (n + 1) at each calibration score v, linear
   between, 1 below the smallest and 1 / (n + 1) beyond the largest (edgevae.runtime.scores.survival_curve). */
static double curve(const reference *r, double s) {
    double n1 = (double)r->n + 1.0;
    if (s < r->scores[0]) return 1.0;
    if (s > r->scores[r->n - 1]) return 1.0 / n1;
    size_t hi = lower_bound(r, s);
    if (r->scores[hi] == s) return (n1 - (double)hi) / n1;
    size_t lo = lower_bound(r, r->scores[hi - 1]); /* the left knot's first index */
    double left = (n1 - (double)lo) / n1, right = (n1 - (double)hi) / n1;
    double v = left + (s - r->scores[lo]) / (r->scores[hi] - r->scores[lo]) * (right - left);
    return isfinite(v) ? v : left; /* knots a subnormal distance apart */
}

/* The natural log of the runtime's p-value (edgevae.runtime.scores.log_p_values): the curve, or above the tail's
   start the tail model capped at the curve's value there; in log space it never underflows. A combined part's
   reference reads a bounded tail (shape < 0) with shape 0 (unbounded set). */
static double log_p_value(const reference *r, double s) {
    if (r->tail.present && s > r->tail.start) {
        double z = fmax(s - r->tail.start, 0.0) / r->tail.scale, shape = r->unbounded ? fmax(r->tail.shape, 0.0)
                                                                                       : r->tail.shape, lp;
        if (fabs(shape) < 1e-9) lp = log(r->tail.fraction) - z;
        else {
            double base = 1.0 + shape * z;
            lp = base > 0.0 ? log(r->tail.fraction) - log(base) / shape : -INFINITY;
        }
        return fmin(lp, log(curve(r, r->tail.start)));
    }
    return log(curve(r, s));
}

static double p_value(const reference *r, double s) { return exp(log_p_value(r, s)); }

static void close_bundle(bundle *b) {
    if (b->encoder) ORT->ReleaseSession(b->encoder);
    if (b->decoder) ORT->ReleaseSession(b->decoder);
    if (b->defect) ORT->ReleaseSession(b->defect);
    if (b->memory) ORT->ReleaseMemoryInfo(b->memory);
    if (b->env) ORT->ReleaseEnv(b->env);
    free(b->cal.scores);
    for (int i = 0; i < MAX_PARTS; i++) { free(b->part_ref[i].scores); free(b->part[i].noise); }
    free(b->spec.noise);
    free(b->map);
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

/* Median time (microseconds) of `repeat` score calls on one preprocessed image. */
static double median_score_us(bundle *b, float *x, int repeat, char *err) {
    double *times = malloc(sizeof(double) * (size_t)repeat), s, median;
    for (int r = 0; times && r < repeat; r++) {
        double started = now_us();
        if (!score(b, x, &s, err)) { free(times); return NAN; }
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
    double thr = isnan(threshold) ? b.threshold : threshold;
    int failed = 0;
    for (int i = first; i < argc; i++) {
        double s = 0;
        err[0] = warning[0] = '\0';
        float *x = read_input(&b, argv[i], err, warning);
        int ok = x && score(&b, x, &s, err);
        if (ok && repeat > 0) fprintf(stderr, "timing: %s median %.1f us per score call over %d calls\n", argv[i],
                                      median_score_us(&b, x, repeat, err), repeat);
        free(x);
        printf("{\"item\": ");
        print_string(argv[i]);
        printf(", \"method\": \"%s\", ", b.method);
        if (ok) {
            printf("\"score\": %.9g, \"p_value\": %.17g, \"outlier\": %s", s, p_value(&b.cal, s),
                   (float)s > (float)thr ? "true" : "false");
            if (warning[0]) { printf(", \"warning\": "); print_string(warning); fprintf(stderr, "warning: %s: %s\n", argv[i], warning); }
            printf("}\n");
        }
        else { printf("\"error\": "); print_string(err); printf("}\n"); fprintf(stderr, "error: %s\n", err); failed++; }
    }
    close_bundle(&b);
    return failed ? 2 : 0;
}

/* The manifest as edgevae-score reads it (manifest.h): pure C over the parsed JSON, fuzzed by fuzz/fuzz_manifest.c. */
#include "manifest.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A whole number the manifest gives, or INT_MIN (which every range check refuses) when it is not one that fits. */
static int whole(double v) {
    return isfinite(v) && v == floor(v) && fabs(v) <= (double)INT_MAX ? (int)v : INT_MIN;
}

double number(const json *root, const char *const *keys, double fallback) {
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
    free(r->scores);
    r->n = 0;
    r->scores = malloc(scores->count * sizeof(double));
    if (!r->scores) { snprintf(err, MSG, "out of memory"); return 0; }
    for (const json *s = scores->child; s; s = s->next) {
        if (s->type != JSON_NUMBER || !isfinite(s->number)) { snprintf(err, MSG, "%s holds a score that is not a finite number", what); return 0; }
        r->scores[r->n++] = s->number;
    }
    for (size_t i = 1; i < r->n; i++)
        if (r->scores[i] < r->scores[i - 1]) { snprintf(err, MSG, "%s: scores are not sorted", what); return 0; }
    if (tail && tail->type == JSON_OBJECT) {
        const char *k[][2] = {{"start", NULL}, {"fraction", NULL}, {"shape", NULL}, {"scale", NULL}};
        r->tail = (tail_fit){number(tail, k[0], NAN), number(tail, k[1], NAN), number(tail, k[2], NAN),
                             number(tail, k[3], NAN), 1};
        if (!isfinite(r->tail.start) || !(r->tail.fraction > 0 && r->tail.fraction <= 1) || !isfinite(r->tail.shape) ||
            !(r->tail.scale > 0) || !isfinite(r->tail.scale)) {
            snprintf(err, MSG, "%s has a malformed tail (start, fraction in (0, 1], shape, scale > 0)", what);
            return 0;
        }
    }
    return 1;
}

static int load_calibration(scoring *b, const json *manifest, char *err) {
    const char *keys[] = {"calibration", "methods", b->method, NULL};
    const json *cal = json_path(manifest, keys), *threshold = json_get(cal, "threshold");
    if (!cal || !threshold || threshold->type != JSON_NUMBER || !isfinite(threshold->number)) {
        snprintf(err, MSG, "the bundle does not calibrate method %s", b->method);
        return 0;
    }
    b->threshold = threshold->number;
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
    spec->window = (v = json_get(entry, "window")) && v->type == JSON_NUMBER ? whole(v->number) : 0;
    if (strcmp(spec->kind, "defect") == 0 && (spec->window < 1 || spec->window > 255)) {
        snprintf(err, MSG, "method %s has no window in 1..255", name);
        return 0;
    }
    spec->samples = (v = json_get(entry, "samples")) && v->type == JSON_NUMBER ? whole(v->number) : 0;
    spec->map = (v = json_get(entry, "map")) && v->type == JSON_BOOL && v->number != 0;
    spec->importance = (v = json_get(entry, "importance")) && v->type == JSON_BOOL && v->number != 0;
    spec->negate = (v = json_get(entry, "negate")) && v->type == JSON_BOOL && v->number != 0;
    if ((v = json_get(entry, "noise")) && v->type == JSON_STRING) snprintf(spec->noise_file, sizeof spec->noise_file, "%s", v->string);
    const json *parts = json_get(entry, "parts"), *ks = json_get(entry, "part_samples");
    for (const json *p = parts ? parts->child : NULL; p; p = p->next) {
        if (p->type != JSON_STRING || spec->n_parts == MAX_PARTS) { snprintf(err, MSG, "method %s has bad parts", name); return 0; }
        snprintf(spec->parts[spec->n_parts], sizeof spec->parts[0], "%s", p->string);
        const json *k = json_get(ks, p->string);
        spec->part_samples[spec->n_parts++] = k && k->type == JSON_NUMBER ? whole(k->number) : -1; /* -1: the part's own */
    }
    const json *weights = json_get(entry, "weights");
    if (weights) { /* part i's share of the false-alarm budget: k w_i / sum(w); its p-value is read over it */
        double w[MAX_PARTS], total = 0.0;
        int n = 0, equal = 1;
        for (const json *x = weights->type == JSON_ARRAY ? weights->child : NULL; x; x = x->next) {
            if (n == MAX_PARTS || x->type != JSON_NUMBER || !isfinite(x->number) || !(x->number > 0)) { n = -1; break; }
            w[n++] = x->number;
        }
        if (n != spec->n_parts) {
            snprintf(err, MSG, "method %s has bad weights: one positive number per part is needed", name);
            return 0;
        }
        for (int i = 0; i < n; i++) { total += w[i]; equal = equal && w[i] == w[0]; }
        for (int i = 0; i < n && !equal; i++) spec->log_share[i] = log(n * w[i] / total);
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
        spec->window = whole(number(m, wk, 5));
    }
    for (int i = 0; i < 4; i++) if (strcmp(name, recon[i]) == 0) snprintf(spec->kind, sizeof spec->kind, "reconstruction");
    spec->map = strcmp(name, "local") == 0;
    if (strcmp(name, "elbo") == 0 || strcmp(name, "iwae") == 0 || strcmp(name, "too_likely") == 0) {
        snprintf(spec->kind, sizeof spec->kind, "monte_carlo");
        spec->importance = strcmp(name, "iwae") == 0;
        spec->negate = strcmp(name, "too_likely") == 0;
        const json *file = json_get(noise, "file"), *shape = json_get(noise, "shape");
        if (file && file->type == JSON_STRING) snprintf(spec->noise_file, sizeof spec->noise_file, "%s", file->string);
        if (shape && shape->child) spec->samples = whole(shape->child->number);
    }
    if (strcmp(name, "combined") == 0 && combined) {
        const char *ek[] = {"elbo_samples", NULL};
        snprintf(spec->kind, sizeof spec->kind, "combination");
        const json *parts = json_get(combined, "parts");
        for (const json *p = parts ? parts->child : NULL; p && spec->n_parts < MAX_PARTS; p = p->next) {
            int i = spec->n_parts++;
            snprintf(spec->parts[i], sizeof spec->parts[0], "%s", p->type == JSON_STRING ? p->string : "");
            int elbo_like = strcmp(spec->parts[i], "elbo") == 0 || strcmp(spec->parts[i], "too_likely") == 0;
            spec->part_samples[i] = elbo_like ? whole(number(combined, ek, 1)) : -1;
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
static int load_parts(scoring *b, const json *manifest, char *err) {
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


/* Whether entry names a plain file in the bundle (copied into out) of shape [lead, h, w]. */
static int frame_file(const json *entry, int lead, int h, int w, char *out, size_t size) {
    const json *file = json_get(entry, "file"), *shape = json_get(entry, "shape");
    if (!entry || entry->type != JSON_OBJECT || !file || file->type != JSON_STRING || !file->string ||
        !file->string[0] || strchr(file->string, '/') || strchr(file->string, '\\') || strcmp(file->string, ".") == 0 ||
        strcmp(file->string, "..") == 0 || strlen(file->string) >= size || !shape || shape->type != JSON_ARRAY ||
        shape->count != 3 || shape->child->type != JSON_NUMBER || shape->child->next->type != JSON_NUMBER ||
        shape->child->next->next->type != JSON_NUMBER || whole(shape->child->number) != lead ||
        whole(shape->child->next->number) != h || whole(shape->child->next->next->number) != w) return 0;
    snprintf(out, size, "%s", file->string);
    return 1;
}

/* A fixed camera's frame alignment (tiling.alignment), when it has one: the reference's file, the radius, the tie
   margin and the aligned statistics' files, checked against the frame and the input's channels. */
static int load_alignment(const json *t, scoring *s, char *err) {
    const json *a = json_get(t, "alignment"), *radius = json_get(a, "radius"), *tie = json_get(a, "tie");
    tiling_spec *ts = &s->tiling;
    int h = ts->frame_h, w = ts->frame_w, most = (h < w ? h : w) / 2 - 1;
    if (most > MAX_ALIGN_RADIUS) most = MAX_ALIGN_RADIUS;
    if (!a) return 1;
    ts->align_radius = radius && radius->type == JSON_NUMBER ? whole(radius->number) : 0;
    ts->align_tie = tie ? (tie->type == JSON_NUMBER ? tie->number : -1) : 1e-6;
    if (a->type != JSON_OBJECT || ts->align_radius < 1 || ts->align_radius > most || !(ts->align_tie >= 0) ||
        !(ts->align_tie < 1e-3) || !frame_file(a, s->channels, h, w, ts->align_file, sizeof ts->align_file) ||
        !frame_file(json_get(a, "map"), 2, h, w, ts->align_map_file, sizeof ts->align_map_file) ||
        (json_get(a, "defect_map") && !frame_file(json_get(a, "defect_map"), 2, h, w, ts->align_defect_file,
                                                   sizeof ts->align_defect_file))) {
        snprintf(err, MSG, "tiling.alignment must name a reference file of shape [%d, %d, %d] (the input's channels and "
                 "the frame), a whole radius in 1..%d, a tie in [0, 0.001) and map (and defect_map) files of shape "
                 "[2, %d, %d]", s->channels, h, w, most, h, w);
        ts->align_radius = 0;
        return 0;
    }
    ts->align_defect = json_get(a, "defect_map") != NULL;
    return 1;
}

/* A fixed camera's tiling (positional: true): its frame, its per-position map statistics' file (checked against
   the frame) and, for a combination, its parts' references read per position (they replace the tiles' own). */
static int load_positional(const json *t, scoring *s, char *err) {
    const json *frame = json_get(t, "frame"), *map = json_get(t, "map"), *shape = json_get(map, "shape"),
               *file = json_get(map, "file"), *refs = json_get(t, "references");
    const char *sk[] = {"sigma", NULL}, *tk[] = {"top_k", NULL};
    tiling_spec *ts = &s->tiling;
    if (!frame || frame->type != JSON_ARRAY || frame->count != 2 || frame->child->type != JSON_NUMBER ||
        frame->child->next->type != JSON_NUMBER) {
        snprintf(err, MSG, "tiling.frame must be [height, width] for a fixed camera (tiling.positional)");
        return 0;
    }
    ts->frame_h = whole(frame->child->number);
    ts->frame_w = whole(frame->child->next->number);
    if (ts->frame_h < s->height || ts->frame_w < s->width || ts->frame_h > MAX_SIDE || ts->frame_w > MAX_SIDE ||
        (long)ts->frame_h * ts->frame_w > (1L << 26)) {
        snprintf(err, MSG, "tiling.frame must be at least one tile (%dx%d) and at most %d a side (2^26 pixels)",
                 s->height, s->width, MAX_SIDE);
        return 0;
    }
    if (!file || file->type != JSON_STRING || !file->string || !file->string[0] || strchr(file->string, '/') ||
        strlen(file->string) >= sizeof ts->frame_map_file || !shape || shape->type != JSON_ARRAY || shape->count != 3 ||
        shape->child->type != JSON_NUMBER || shape->child->next->type != JSON_NUMBER ||
        shape->child->next->next->type != JSON_NUMBER || whole(shape->child->number) != 2 ||
        whole(shape->child->next->number) != ts->frame_h || whole(shape->child->next->next->number) != ts->frame_w) {
        snprintf(err, MSG, "tiling.map must name a file in the bundle of shape [2, %d, %d] (the frame)", ts->frame_h,
                 ts->frame_w);
        return 0;
    }
    snprintf(ts->frame_map_file, sizeof ts->frame_map_file, "%s", file->string);
    ts->frame_sigma = number(map, sk, NAN);
    ts->frame_top_k = whole(number(map, tk, 0));
    if (!(ts->frame_sigma > 0 && ts->frame_sigma <= 64) || ts->frame_top_k < 1 || ts->frame_top_k > s->height * s->width) {
        snprintf(err, MSG, "tiling.map has a sigma outside (0, 64] or a top_k outside 1..%d", s->height * s->width);
        return 0;
    }
    const json *dmap = json_get(t, "defect_map"), *dfile = json_get(dmap, "file"), *dshape = json_get(dmap, "shape");
    if (dmap) {
        if (dmap->type != JSON_OBJECT || !dfile || dfile->type != JSON_STRING || !dfile->string || !dfile->string[0] ||
            strchr(dfile->string, '/') || strlen(dfile->string) >= sizeof ts->frame_defect_file || !dshape ||
            dshape->type != JSON_ARRAY || dshape->count != 3 || dshape->child->type != JSON_NUMBER ||
            dshape->child->next->type != JSON_NUMBER || dshape->child->next->next->type != JSON_NUMBER ||
            whole(dshape->child->number) != 2 || whole(dshape->child->next->number) != ts->frame_h ||
            whole(dshape->child->next->next->number) != ts->frame_w) {
            snprintf(err, MSG, "tiling.defect_map must name a file in the bundle of shape [2, %d, %d] (the frame)",
                     ts->frame_h, ts->frame_w);
            return 0;
        }
        snprintf(ts->frame_defect_file, sizeof ts->frame_defect_file, "%s", dfile->string);
        ts->frame_defect = 1;
    }
    for (int i = 0; strcmp(s->spec.kind, "combination") == 0 && i < s->spec.n_parts; i++) {
        if (!load_reference(json_get(refs, s->part[i].name), &s->part_ref[i],
                            "a fixed camera's combined part's reference (tiling.references)", err)) return 0;
        s->part_ref[i].unbounded = 1;
    }
    if (!load_alignment(t, s, err)) return 0;
    ts->positional = 1;
    return 1;
}

/* The manifest's tiling section, when it has one: checked against what this program does (tiles of the input's
   size, the largest tile score, no shrinking; position-free statistics or a fixed camera's), with the method's
   image-level calibration. */
static int load_tiling(const json *m, scoring *s, char *err) {
    const json *t = json_get(m, "tiling"), *tile = json_get(t, "tile"), *v;
    if (!t) return 1;
    const char *sk[] = {"stride", NULL}, *dk[] = {"downscale", NULL}, *fk[] = {"calibration", "fpr", NULL},
               *nk[] = {"calibration", "tiles_median", NULL}, *mk[] = {"calibration", "methods", s->method, NULL};
    tiling_spec *ts = &s->tiling;
    int side = s->height < s->width ? s->height : s->width, downscale = whole(number(t, dk, 1));
    if (t->type != JSON_OBJECT || !tile || tile->type != JSON_ARRAY || tile->count != 2 ||
        tile->child->type != JSON_NUMBER || tile->child->next->type != JSON_NUMBER ||
        whole(tile->child->number) != s->height || whole(tile->child->next->number) != s->width) {
        snprintf(err, MSG, "tiling.tile must be the input's [height, width] ([%d, %d])", s->height, s->width);
        return 0;
    }
    ts->stride = whole(number(t, sk, 0));
    if (ts->stride < 1 || ts->stride > side) {
        snprintf(err, MSG, "tiling.stride must be a whole number in 1..%d (the tile's side)", side);
        return 0;
    }
    if ((v = json_get(t, "aggregate")) && !(v->type == JSON_STRING && strcmp(v->string, "max") == 0)) {
        snprintf(err, MSG, "tiling.aggregate must be \"max\", the one aggregate edgevae scores with");
        return 0;
    }
    if (downscale != 1) {
        snprintf(err, MSG, "this tiled bundle shrinks images %dx before tiling (tiling.downscale), which this program "
                 "does not do; score it with the Python runtime (edgevae score)", downscale);
        return 0;
    }
    if ((v = json_get(t, "positional")) && v->type != JSON_BOOL) {
        snprintf(err, MSG, "tiling.positional must be true (a fixed camera) or false (a stationary surface)");
        return 0;
    }
    if (v && v->number != 0 && !load_positional(t, s, err)) return 0;
    const json *cal = json_path(t, mk), *threshold = json_get(cal, "threshold");
    ts->fpr = number(t, fk, NAN);
    ts->tiles_median = whole(number(t, nk, 0));
    if (!cal || !threshold || threshold->type != JSON_NUMBER || !isfinite(threshold->number) ||
        !(ts->fpr > 0 && ts->fpr < 1) || ts->tiles_median < 0) {
        snprintf(err, MSG, "method %s has no image-level calibration in this tiled bundle (tiling.calibration: "
                 "threshold, fpr in (0, 1), tiles_median >= 0); calibrate it on whole images with edgevae calibrate",
                 s->method);
        return 0;
    }
    ts->threshold = threshold->number;
    ts->present = 1;
    return load_reference(cal, &ts->cal, "the image-level calibration", err);
}

/* A method entry's numbers, checked: K, a combination's parts' K, a defect window. */
static int check_spec(const method_spec *spec, char *err) {
    int mc = strcmp(spec->kind, "monte_carlo") == 0;
    if (mc && (spec->samples < 1 || spec->samples > MAX_SAMPLES)) {
        snprintf(err, MSG, "method %s draws %d samples; the manifest must give 1..%d", spec->name, spec->samples, MAX_SAMPLES);
        return 0;
    }
    if (strcmp(spec->kind, "defect") == 0 && (spec->window < 1 || spec->window > 255)) {
        snprintf(err, MSG, "method %s has no window in 1..255", spec->name);
        return 0;
    }
    for (int i = 0; i < spec->n_parts; i++)
        if (spec->part_samples[i] != -1 && (spec->part_samples[i] < 0 || spec->part_samples[i] > MAX_SAMPLES)) {
            snprintf(err, MSG, "method %s gives its part %s %d samples; the manifest must give 0..%d", spec->name,
                     spec->parts[i], spec->part_samples[i], MAX_SAMPLES);
            return 0;
        }
    return 1;
}

static const char *string_at(const json *root, const char *const *keys) {
    const json *v = json_path(root, keys);
    return v && v->type == JSON_STRING && v->string ? v->string : NULL;
}

int read_scoring(const json *m, const char *method, scoring *s, char *err) {
    const char *fmt[] = {"format", NULL}, *ver[] = {"schema_version", NULL}, *ch[] = {"input", "channels", NULL},
               *h[] = {"input", "height", NULL}, *w[] = {"input", "width", NULL}, *d[] = {"latent_dim", NULL},
               *lk[] = {"likelihood", NULL}, *sg[] = {"scoring", "smooth_sigma", NULL},
               *dm[] = {"scoring", "default_method", NULL};
    const char *format = string_at(m, fmt), *likelihood = string_at(m, lk), *deflt = string_at(m, dm);
    if (!format || strcmp(format, "edgevae-bundle") != 0 || number(m, ver, 0) != 1 || !likelihood || !deflt) {
        snprintf(err, MSG, "not an edgevae manifest of schema version 1");
        return 0;
    }
    s->channels = whole(number(m, ch, 0)); s->height = whole(number(m, h, 0)); s->width = whole(number(m, w, 0));
    s->latent = whole(number(m, d, 0)); s->sigma = number(m, sg, 1.0);
    if ((s->channels != 1 && s->channels != 3) || s->height < 1 || s->height > MAX_SIDE || s->width < 1 ||
        s->width > MAX_SIDE || (long)s->channels * s->height * s->width > MAX_VALUES) {
        snprintf(err, MSG, "the manifest's input is not 1 or 3 channels of 1..%d pixels a side (at most %ld values)",
                 MAX_SIDE, MAX_VALUES);
        return 0;
    }
    if (s->latent < 1 || s->latent > MAX_LATENT || !(s->sigma > 0 && s->sigma <= 64)) {
        snprintf(err, MSG, "the manifest's latent_dim (1..%d) or smooth_sigma (0..64] is out of range", MAX_LATENT);
        return 0;
    }
    s->bernoulli = strcmp(likelihood, "bernoulli") == 0;
    snprintf(s->method, sizeof s->method, "%s", method ? method : deflt);
    if (!load_spec(m, s->method, &s->spec, err) || !check_spec(&s->spec, err)) return 0;
    if (!implemented(&s->spec)) {
        snprintf(err, MSG, "method %s is not implemented here (kl, recon, rel_recon, smooth_recon, elbo, too_likely, "
                 "local, defect, combined)", s->method);
        return 0;
    }
    int combination = strcmp(s->spec.kind, "combination") == 0;
    if (!load_calibration(s, m, err) || (combination && !load_parts(s, m, err))) return 0;
    const method_spec *used[MAX_PARTS + 1] = {&s->spec};
    int n = 1;
    for (int i = 0; combination && i < s->spec.n_parts; i++) used[n++] = &s->part[i];
    for (int i = 0; i < n; i++) {
        if (i > 0 && !check_spec(used[i], err)) return 0;
        if (strcmp(used[i]->kind, "monte_carlo") == 0 && !used[i]->noise_file[0]) {
            snprintf(err, MSG, "the bundle carries no %s noise file (exported before edgevae stored it); re-export it",
                     used[i]->name);
            return 0;
        }
        s->map |= used[i]->map;
        s->decoder |= used[i]->decoder;
        s->defect |= used[i]->defect;
        s->encoder |= strcmp(used[i]->kind, "defect") != 0 && strcmp(used[i]->kind, "combination") != 0;
    }
    if (!load_tiling(m, s, err)) return 0;
    if (s->map) {
        const char *keys[] = {"scoring", "map", "file", NULL}, *sk[] = {"scoring", "map", "sigma", NULL},
                   *tk[] = {"scoring", "map", "top_k", NULL};
        const char *file = string_at(m, keys);
        if (!file) {
            snprintf(err, MSG, "the bundle stores no anomaly-map statistics (it predates them); re-export it");
            return 0;
        }
        snprintf(s->map_file, sizeof s->map_file, "%s", file);
        s->map_sigma = number(m, sk, 1.0);
        s->top_k = whole(number(m, tk, 0));
        if (!(s->map_sigma > 0 && s->map_sigma <= 64) || s->top_k < 1 || s->top_k > s->height * s->width) {
            snprintf(err, MSG, "scoring.map has a sigma outside (0, 64] or a top_k outside 1..%d", s->height * s->width);
            return 0;
        }
    }
    return 1;
}

void free_scoring(scoring *s) {
    free(s->cal.scores);
    s->cal.scores = NULL;
    free(s->tiling.cal.scores);
    s->tiling.cal.scores = NULL;
    for (int i = 0; i < MAX_PARTS; i++) {
        free(s->part_ref[i].scores); free(s->part[i].noise);
        s->part_ref[i].scores = NULL; s->part[i].noise = NULL;
    }
    free(s->spec.noise);
    s->spec.noise = NULL;
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
    if (isnan(s)) return NAN; /* no order to place it in */
    if (r->n == 0 || !r->scores) return 1.0; /* no reference scores (never loaded): nothing is unusual */
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
double log_p_value(const reference *r, double s) {
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

double p_value(const reference *r, double s) { return exp(log_p_value(r, s)); }


double size_adjusted_p(double p0, int tiles, int tiles_median) {
    if (tiles_median <= 0 || tiles == tiles_median || p0 >= 1.0) return p0;
    return -expm1((double)tiles / tiles_median * log1p(-p0));
}

double size_adjusted_fpr(double fpr, int tiles, int tiles_median) {
    if (tiles_median <= 0 || tiles == tiles_median) return fpr;
    return -expm1((double)tiles_median / tiles * log1p(-fpr));
}

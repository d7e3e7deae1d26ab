/* The bundle's manifest as edgevae-score reads it: the input contract, the chosen method's entry
 * (scoring.method_specs, or for older bundles the same entry built from their older fields), its parts, its
 * calibration and the p-value rule. Pure C over the JSON tree: no onnxruntime, no files, so the fuzzer
 * (fuzz/fuzz_manifest.c) runs it on any manifest. Every number it takes from the manifest is range-checked
 * before anything is allocated or indexed with it. */
#ifndef EDGEVAE_MANIFEST_H
#define EDGEVAE_MANIFEST_H

#include <stddef.h>

#include "json.h"

#define MSG 8192
#define MAX_PARTS 8
/* Limits of what a manifest may say (edgevae.runtime's own limits are within them). */
#define MAX_SIDE 16384
#define MAX_VALUES ((long)1 << 28)      /* C * H * W of one image */
#define MAX_LATENT 65536
#define MAX_SAMPLES 100000

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
    double log_share[MAX_PARTS]; /* ln(k w_i / sum w) of the parts' weights (scoring.combined.weights); 0: equal */
} method_spec;

/* A tiled bundle (the manifest's tiling): an image of any size at least one tile (the input's size) is scored
   tile by tile, tiles `stride` apart with the last row and column flush with the far edges; its score is the
   largest tile score, and its p-value and flag come from the image-level calibration (tiling.calibration),
   adjusted for the image's number of tiles against the calibration images' median, tiles_median
   (edgevae.runtime.tiles). */
/* The largest frame alignment radius a manifest may give (edgevae.runtime.tiles.ALIGN_RADIUS_MAX). */
#define MAX_ALIGN_RADIUS 8

typedef struct {
    int present, stride, tiles_median; /* tiles_median 0: the calibration does not say (no size adjustment) */
    double threshold, fpr;     /* the method's image-level threshold, at the calibrated rate fpr */
    reference cal;             /* the method's image-level calibration */
    /* A fixed camera (tiling.positional): frames of frame_h x frame_w only; the tiles' residual magnitudes are
       stitched over the frame and standardised per pixel by tiling.map's file (float32 (2, frame_h, frame_w));
       a tile's local is the mean of the frame_top_k largest values under it, and a combination's parts are read
       against tiling.references (loaded into the scoring's part_ref). */
    int positional, frame_h, frame_w, frame_top_k;
    double frame_sigma;
    char frame_map_file[128];
    /* With a defect head, tiling.defect_map's file (float32 (2, frame_h, frame_w)) standardises the head's logits
       stitched over the frame the same way; a tile's defect is the largest window mean of that map under it.
       frame_defect 0: the bundle has none (its defect is read position-free). */
    int frame_defect;
    char frame_defect_file[128];
    /* A fixed camera's frame alignment (tiling.alignment; align_radius 0: none): a frame's shift within
       align_radius against the reference (align_file, float32 (channels, frame_h, frame_w)), and its maps read
       against the aligned statistics (align_map_file, align_defect_file: float32 (2, frame_h, frame_w)) moved by
       it, except in a border band of align_radius pixels (edgevae.runtime.tiles.FrameAlignment). */
    int align_radius, align_defect;
    double align_tie;
    char align_file[128], align_map_file[128], align_defect_file[128];
} tiling_spec;

/* What scoring needs from the manifest, read and checked by read_scoring. */
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
    int encoder, decoder, defect, map; /* the graphs and the map statistics the method (and its parts) need */
    char map_file[128];        /* scoring.map: its file, smoothing and top_k (when map) */
    double map_sigma;
    int top_k;
    tiling_spec tiling;        /* present: a tiled bundle */
} scoring;

/* Reads and checks everything scoring `method` (NULL: the bundle's default) needs from a parsed manifest;
   0 with a message in err (MSG bytes) when something is missing, malformed or out of range. free_scoring
   releases what it allocated, also after a failure. */
int read_scoring(const json *manifest, const char *method, scoring *s, char *err);
void free_scoring(scoring *s);

/* A number at a path of the tree, or the fallback when absent or not a number. */
double number(const json *root, const char *const *keys, double fallback);

/* The natural log of the runtime's p-value of score s against a reference (edgevae.runtime.scores.log_p_values). */
double log_p_value(const reference *r, double s);
double p_value(const reference *r, double s);

/* A tiled image's p-value from p0, its p-value against whole calibration images: an image of `tiles` tiles is
   `tiles / tiles_median` independent images of the calibrated size, 1 - (1 - p0)^(tiles / tiles_median)
   (edgevae.runtime.tiles.size_adjusted_p); and the rate at which p0 is compared for a flag at `fpr`
   (size_adjusted_fpr). */
double size_adjusted_p(double p0, int tiles, int tiles_median);
double size_adjusted_fpr(double fpr, int tiles, int tiles_median);

#endif

/*
 * phantom_util.c - the phantom generator's arithmetic: seeded random
 * streams, smooth noise, UIDs and dates derived from seeds, a separable
 * blur and curve interpolation.
 *
 * Nothing here reads the clock or global random state, so that a run is a
 * pure function of its seed and options.  All functions are reentrant.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/phantom.h"

uint64_t ph_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t ph_hash2(uint64_t a, uint64_t b)
{
    return ph_mix(ph_mix(a) ^ (b * 0xD6E8FEB86659FD93ull + 0x2545F4914F6CDD1Dull));
}

uint64_t ph_hash_str(uint64_t h, const char *s)
{
    /* FNV-1a over the bytes, then mixed with h, so that short names that
     * differ in one letter still give unrelated streams. */
    uint64_t f = 0xCBF29CE484222325ull;
    for (; *s; s++) f = (f ^ (unsigned char)*s) * 0x100000001B3ull;
    return ph_hash2(h, f);
}

void ph_rng_init(ph_rng *r, uint64_t seed, const char *purpose)
{
    uint64_t x = ph_hash_str(seed, purpose);
    for (int i = 0; i < 4; i++) {
        x = ph_mix(x + (uint64_t)i);
        r->s[i] = x;
    }
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) r->s[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ph_next(ph_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double ph_unif(ph_rng *r) { return (double)(ph_next(r) >> 11) * 0x1.0p-53; }
double ph_range(ph_rng *r, double lo, double hi) { return lo + (hi - lo) * ph_unif(r); }
int ph_int(ph_rng *r, int n) { return n <= 1 ? 0 : (int)(ph_unif(r) * n); }
int ph_chance(ph_rng *r, double p) { return ph_unif(r) < p; }

double ph_gauss(ph_rng *r)
{
    /* Box-Muller; the second value is dropped so that the stream position
     * does not depend on how many values were asked for before. */
    double u = ph_unif(r), v = ph_unif(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* ---- noise ------------------------------------------------------------------ */

static inline double lattice(uint64_t seed, int64_t x, int64_t y, int64_t z)
{
    uint64_t h = seed ^ ((uint64_t)x * 0x9E3779B97F4A7C15ull) ^
                 ((uint64_t)y * 0xC2B2AE3D27D4EB4Full) ^ ((uint64_t)z * 0x165667B19E3779F9ull);
    h = ph_mix(h);
    return (double)(h >> 11) * 0x1.0p-52 - 1.0;
}

static inline double fade(double t) { return t * t * t * (t * (t * 6 - 15) + 10); }

double ph_noise3(uint64_t seed, double x, double y, double z)
{
    double fx = floor(x), fy = floor(y), fz = floor(z);
    int64_t ix = (int64_t)fx, iy = (int64_t)fy, iz = (int64_t)fz;
    double tx = fade(x - fx), ty = fade(y - fy), tz = fade(z - fz);
    double c[2][2][2];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int d = 0; d < 2; d++) c[a][b][d] = lattice(seed, ix + a, iy + b, iz + d);
    double x00 = ph_lerp(c[0][0][0], c[1][0][0], tx), x10 = ph_lerp(c[0][1][0], c[1][1][0], tx);
    double x01 = ph_lerp(c[0][0][1], c[1][0][1], tx), x11 = ph_lerp(c[0][1][1], c[1][1][1], tx);
    return ph_lerp(ph_lerp(x00, x10, ty), ph_lerp(x01, x11, ty), tz);
}

double ph_fbm(uint64_t seed, const double p[3], double freq)
{
    double a = ph_noise3(seed, p[0] * freq, p[1] * freq, p[2] * freq);
    double b = ph_noise3(seed + 1, p[0] * freq * 2.1 + 17.3, p[1] * freq * 2.1 - 5.1,
                         p[2] * freq * 2.1 + 3.7);
    return (a + 0.45 * b) / 1.2;
}

/* ---- geometry helpers --------------------------------------------------------- */

double ph_smin(double a, double b, double k)
{
    if (k <= 0) return a < b ? a : b;
    double h = ph_clamp(0.5 + 0.5 * (b - a) / k, 0, 1);
    return ph_lerp(b, a, h) - k * h * (1 - h);
}

double ph_curve(const double (*tab)[2], int n, double x)
{
    if (n <= 0) return 0;
    if (x <= tab[0][0]) return tab[0][1];
    if (x >= tab[n - 1][0]) return tab[n - 1][1];
    int i = 0;
    while (i < n - 2 && x > tab[i + 1][0]) i++;
    double x0 = tab[i][0], x1 = tab[i + 1][0];
    double t = (x - x0) / (x1 - x0);
    /* Catmull-Rom with tangents from the neighbouring points (one-sided at
     * the ends), scaled for uneven spacing. */
    double y0 = tab[i][1], y1 = tab[i + 1][1];
    double m0 = i > 0 ? (y1 - tab[i - 1][1]) / (x1 - tab[i - 1][0]) : (y1 - y0) / (x1 - x0);
    double m1 = i + 2 < n ? (tab[i + 2][1] - y0) / (tab[i + 2][0] - x0) : (y1 - y0) / (x1 - x0);
    double h = x1 - x0, t2 = t * t, t3 = t2 * t;
    return (2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * h * m0 + (-2 * t3 + 3 * t2) * y1 +
           (t3 - t2) * h * m1;
}

/* ---- identifiers --------------------------------------------------------------- */

void ph_uid(char *out, size_t n, uint64_t seed, int index, const char *purpose)
{
    uint64_t h = ph_hash_str(ph_hash2(seed, (uint64_t)index), purpose);
    unsigned __int128 v = ((unsigned __int128)ph_mix(h) << 64) | ph_mix(h ^ 0x5851F42D4C957F2Dull);
    char digits[48];
    int k = 0;
    do {
        digits[k++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v && k < 40);
    size_t w = (size_t)snprintf(out, n, "2.25.");
    for (int i = k - 1; i >= 0 && w + 1 < n; i--) out[w++] = digits[i];
    if (w < n) out[w] = 0;
}

void ph_date(char *out, size_t n, int days)
{
    /* Days since 1970-01-01 to a civil date (H. Hinnant's algorithm). */
    long z = 14610 + (long)days + 719468; /* 14610: 1970-01-01 .. 2010-01-01 */
    long era = (z >= 0 ? z : z - 146096) / 146097;
    long doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long y = yoe + era * 400;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long mp = (5 * doy + 2) / 153;
    long d = doy - (153 * mp + 2) / 5 + 1;
    long m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y++;
    snprintf(out, n, "%04ld%02ld%02ld", y, m, d);
}

/* ---- blur ------------------------------------------------------------------------ */

static int gauss_kernel(double sigma, float *k)
{
    int r = (int)ceil(3 * sigma);
    if (r > 16) r = 16;
    float sum = 0;
    for (int j = -r; j <= r; j++) sum += k[j + r] = (float)exp(-0.5 * j * j / (sigma * sigma));
    for (int j = 0; j <= 2 * r; j++) k[j] /= sum;
    return r;
}

/* Along x: each row is contiguous. */
static void blur_x(float *v, int nx, size_t rows, const float *k, int r, float *tmp)
{
    for (size_t row = 0; row < rows; row++) {
        float *line = v + row * nx;
        for (int i = 0; i < nx; i++) {
            float acc = 0;
            for (int j = -r; j <= r; j++) {
                int q = i + j;
                q = q < 0 ? 0 : q >= nx ? nx - 1 : q;
                acc += k[j + r] * line[q];
            }
            tmp[i] = acc;
        }
        memcpy(line, tmp, (size_t)nx * sizeof *line);
    }
}

/* out[row] = sum of k[t] * in[row + t], whole rows at a time (rows of n
 * floats, `count` rows, stride between rows `stride` floats); `save`
 * holds r + 1 rows of originals that were already overwritten. */
static void blur_rows(float *v, size_t n, int count, size_t stride, const float *k, int r,
                      float *save)
{
    for (int q = 0; q < count; q++) {
        float *out = v + (size_t)q * stride;
        float *keep = save + (size_t)(q % (r + 1)) * n;
        memcpy(keep, out, n * sizeof *out);
        /* Sum into the row itself: start with the centre tap. */
        for (size_t i = 0; i < n; i++) out[i] = k[r] * keep[i];
        for (int t = -r; t <= r; t++) {
            if (!t) continue;
            int src = q + t;
            src = src < 0 ? 0 : src >= count ? count - 1 : src;
            const float *in;
            if (src < q)
                in = save + (size_t)(src % (r + 1)) * n;
            else if (src == q)
                in = keep;
            else
                in = v + (size_t)src * stride;
            float w = k[t + r];
            for (size_t i = 0; i < n; i++) out[i] += w * in[i];
        }
    }
}

void ph_blur(float *v, int nx, int ny, int nz, const double sigma[3])
{
    size_t plane = (size_t)nx * ny;
    int maxr = 16;
    size_t need = (size_t)(maxr + 1) * (plane > (size_t)nx ? plane : (size_t)nx);
    float *buf = malloc((need + (size_t)nx) * sizeof *buf);
    if (!buf) return;
    float k[33];
    if (sigma[0] > 0.05 && nx > 1) {
        int r = gauss_kernel(sigma[0], k);
        blur_x(v, nx, (size_t)ny * nz, k, r, buf);
    }
    if (sigma[1] > 0.05 && ny > 1) {
        int r = gauss_kernel(sigma[1], k);
        /* Rows clamp at a slice's edges, so blur each slice on its own. */
        for (int z = 0; z < nz; z++)
            blur_rows(v + plane * z, (size_t)nx, ny, (size_t)nx, k, r, buf);
    }
    if (sigma[2] > 0.05 && nz > 1) {
        int r = gauss_kernel(sigma[2], k);
        /* The rows are whole slices here; the clamp at the ends repeats the
         * first and last slice. */
        blur_rows(v, plane, nz, plane, k, r, buf);
    }
    free(buf);
}

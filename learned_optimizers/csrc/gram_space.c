/* Fused CPU kernels of the Gram-space LSA / Memformer forward and backward (learned_optimizers/fused.py).
 *
 * Compiled on first use by learned_optimizers/fused.py for one token width E = d+1 and one REAL type
 * (cc -O3 -march=native -DE=6 -DREAL=float), loaded with ctypes.
 *
 * Layout: NB = 16 prompts at a time are held batch-last (structure of arrays): a `vec` holds one entry of the
 * per-prompt algebra for all 16 prompts (GCC/Clang vector extensions), so every multiply-add of the tiny
 * (d+1)x(d+1) products is one SIMD operation, and a block's state stays in L1. Threads (pthreads) take
 * contiguous ranges of blocks.
 *
 * Shapes (row-major, contiguous): S seeds (S = 1 outside vmap), B prompts per seed.
 *   G0 (S, B, E, E) context Gram matrices, zq (S, B, E) query tokens, y / dy (S, B).
 *   gram_space: Kp (S, L, NP, E*E) with W_l[i][m] = sum_p Kp[l][p][i*E+m] * G_l[p] over the NP = E(E+1)/2
 *   entries p = (j <= k) of the symmetric Gram matrix G_l = T_lᵀ G0 T_l; C (S, L, L, E) memory coefficients:
 *       U_l = T_l W_l,   T_{l+1} = T_l + inv_n * sum_{j<=l} U_j diag(C[l][j]),   T_0 = I,
 *       y = -zqᵀ T_L e_{E-1}.
 *   sparse: A (S, L, d, d) (each layer's sum over heads of A_h), d = E-1, g_0 = G0[d][:d] = X_ctxᵀ y_ctx:
 *       u_l = g_l A_l,  g_{l+1} = g_l - (G_xx/n) u_l,  y = x_qᵀ (sum_l u_l)/n - y_q.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifndef E
#error "compile with -DE=<d+1>"
#endif
#ifndef REAL
#define REAL float
#endif
#define D (E - 1)
#define NB 16
#define NP (E * (E + 1) / 2)
#define EE (E * E)

typedef REAL vec __attribute__((vector_size(NB * sizeof(REAL))));

/* the index p of the upper-triangle entry (j, k) of an ExE symmetric matrix (row by row, j <= k); loops over
 * j, k are written out so that the compiler unrolls them with constant indices */
static inline int pidx(int j, int k) {
    if (j > k) {
        const int t = j;
        j = k, k = t;
    }
    return j * E - j * (j - 1) / 2 + k - j;
}

static vec *vec_alloc(size_t n) { /* n vecs, zeroed */
    size_t bytes = n * sizeof(vec);
    vec *x = (vec *)aligned_alloc(sizeof(vec), bytes ? bytes : sizeof(vec));
    if (x) memset(x, 0, bytes);
    return x;
}

/* the first nv lanes of x to dst[0..nv) (contiguous) */
static void store_lanes(REAL *dst, vec x, int nv) {
    if (nv == NB) {
        memcpy(dst, &x, sizeof x);
        return;
    }
    REAL t[NB];
    memcpy(t, &x, sizeof x);
    for (int v = 0; v < nv; ++v) dst[v] = t[v];
}

/* src[0..nv) (contiguous) as lanes, zero beyond */
static vec load_lanes(const REAL *src, int nv) {
    vec x = {0};
    if (nv == NB) {
        memcpy(&x, src, sizeof x);
        return x;
    }
    REAL t[NB] = {0};
    for (int v = 0; v < nv; ++v) t[v] = src[v];
    memcpy(&x, t, sizeof x);
    return x;
}

/* ---- transposing NB rows to batch-last ----------------------------------------------------------------------- */

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLE 1
#endif
#endif

#ifdef HAVE_SHUFFLE
#define ZIP_LO(a, b) __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define ZIP_HI(a, b) __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)

/* out[t][v] = src[v * stride + t] for t, v < NB: four rounds of the perfect shuffle (row i and i + 8 zipped into
 * rows 2i, 2i+1) transpose a 16x16 tile in registers */
static inline void transpose_tile(const REAL *src, long stride, vec *out) {
    vec r[NB], s[NB];
    for (int v = 0; v < NB; ++v) memcpy(&r[v], src + v * stride, sizeof(vec));
    for (int round = 0; round < 4; ++round) {
        for (int i = 0; i < NB / 2; ++i) {
            s[2 * i] = ZIP_LO(r[i], r[i + NB / 2]);
            s[2 * i + 1] = ZIP_HI(r[i], r[i + NB / 2]);
        }
        memcpy(r, s, sizeof r);
    }
    memcpy(out, r, sizeof r);
}
#endif

/* out[t][v] = src[v * stride + t] for t < ncols, v < nv (zero for v >= nv). `readable` is how many values may be
 * read from src on (the tiles read up to the next multiple of NB columns of every row). */
static void transpose_rows(const REAL *src, long stride, int ncols, int nv, long readable, vec *out) {
#ifdef HAVE_SHUFFLE
    const int full = (ncols + NB - 1) / NB * NB;
    if (nv == NB && (NB - 1) * stride + full <= readable) {
        int t = 0;
        for (; t + NB <= ncols; t += NB) transpose_tile(src + t, stride, out + t);
        if (t < ncols) {
            vec tmp[NB];
            transpose_tile(src + t, stride, tmp);
            memcpy(out + t, tmp, sizeof(vec) * (ncols - t));
        }
        return;
    }
#endif
    REAL buf[NB];
    for (int t = 0; t < ncols; ++t) {
        for (int v = 0; v < NB; ++v) buf[v] = v < nv ? src[v * stride + t] : 0;
        memcpy(out + t, buf, sizeof(vec));
    }
    (void)readable;
}

static REAL hsum(vec x) {
    REAL s = 0;
    for (int v = 0; v < NB; ++v) s += x[v];
    return s;
}

/* ---- threads --------------------------------------------------------------------------------------------- */

typedef struct {
    void (*fn)(void *, long, long, int);
    void *args;
    long lo, hi;
    int tid, started;
} job_t;

static void *run_job(void *p) {
    job_t *j = (job_t *)p;
    j->fn(j->args, j->lo, j->hi, j->tid);
    return NULL;
}

/* fn(args, lo, hi, tid) over blocks [0, nblocks) split into at most nthreads contiguous ranges */
static void parallel(void (*fn)(void *, long, long, int), void *args, long nblocks, int nthreads) {
    if (nthreads > 64) nthreads = 64;
    if (nthreads > nblocks) nthreads = (int)nblocks;
    if (nthreads <= 1) {
        fn(args, 0, nblocks, 0);
        return;
    }
    pthread_t th[64];
    job_t jobs[64];
    for (int t = 0; t < nthreads; ++t) {
        jobs[t] = (job_t){fn, args, nblocks * t / nthreads, nblocks * (t + 1) / nthreads, t, 0};
        if (t > 0) jobs[t].started = pthread_create(&th[t], NULL, run_job, &jobs[t]) == 0;
        if (t > 0 && !jobs[t].started) run_job(&jobs[t]); /* no thread to be had: run that range here */
    }
    run_job(&jobs[0]);
    for (int t = 1; t < nthreads; ++t)
        if (jobs[t].started) pthread_join(th[t], NULL);
}

/* ---- the context Gram matrix ------------------------------------------------------------------------------- */

typedef struct {
    long B, T; /* prompts, tokens per prompt (the last one, the query, is not in the Gram matrix) */
    const REAL *Z;
    REAL *G, *zq; /* zq may be NULL */
} gram_args;

static void gram_range(void *a_, long lo, long hi, int tid) {
    (void)tid;
    const gram_args *a = (const gram_args *)a_;
    const long n = a->T - 1, cols = (a->zq ? a->T : n) * E; /* the query's columns only when zq is asked for */
    vec *x = vec_alloc((size_t)cols);
    if (!x) return;
    for (long blk = lo; blk < hi; ++blk) {
        const long b0 = blk * NB;
        const int nv = (int)(a->B - b0 < NB ? a->B - b0 : NB);
        transpose_rows(a->Z + b0 * a->T * E, a->T * E, (int)cols, nv, (a->B - b0) * a->T * E, x);
        vec acc[NP];
        for (int j = 0; j < E; ++j) { /* row j of G: E - j accumulators in registers over the tokens */
            vec r[E] = {{0}};
            for (long i = 0; i < n; ++i) {
                const vec *xi = x + i * E, xj = xi[j];
                for (int k = j; k < E; ++k) r[k] += xj * xi[k];
            }
            for (int k = j; k < E; ++k) acc[pidx(j, k)] = r[k];
        }
        REAL at[NP][NB];
        memcpy(at, acc, sizeof at);
        for (int v = 0; v < nv; ++v) {
            REAL *g = a->G + (b0 + v) * EE;
            for (int j = 0; j < E; ++j)
                for (int k = j; k < E; ++k) g[j * E + k] = g[k * E + j] = at[pidx(j, k)][v];
        }
        if (a->zq) {
            REAL qt[E][NB];
            memcpy(qt, x + n * E, sizeof qt);
            for (int v = 0; v < nv; ++v)
                for (int c = 0; c < E; ++c) a->zq[(b0 + v) * E + c] = qt[c][v];
        }
    }
    free(x);
}

/* G (B, E, E) = the context Gram matrices of Z (B, T, E), and, if zq is not NULL, the query tokens zq (B, E) */
void context_gram(long B, long T, const REAL *Z, REAL *G, REAL *zq, int nthreads) {
    gram_args a = {B, T, Z, G, zq};
    parallel(gram_range, &a, (B + NB - 1) / NB, nthreads);
}

/* ---- the general Gram-space recursion --------------------------------------------------------------------- */

/* The entries (i, m) of W_l that the mode can make non-zero (`active`, row-major ExE flags from the caller: e.g.
 * only the y-column of the x-rows for the sparse mode); every loop over W, dW runs over these only. The lists
 * are padded with the zero slot EE to a multiple of 3 for dk_flush's tiles. */
typedef struct {
    int all[EE + 3], last[E + 3]; /* active (i, m) as i*E+m: every column; column E-1 only (the last layer) */
    int nall, nlast, pall, plast; /* their lengths, and padded to a multiple of 3 */
    int rows[E][E], nrows[E];     /* for each column m, its active rows i */
} wcols;

static void wcols_init(wcols *c, const int *active) {
    c->nall = c->nlast = 0;
    for (int m = 0; m < E; ++m) c->nrows[m] = 0;
    for (int i = 0; i < E; ++i)
        for (int m = 0; m < E; ++m)
            if (active[i * E + m]) {
                c->all[c->nall++] = i * E + m;
                if (m == E - 1) c->last[c->nlast++] = i * E + m;
                c->rows[m][c->nrows[m]++] = i;
            }
    c->pall = (c->nall + 2) / 3 * 3;
    c->plast = (c->nlast + 2) / 3 * 3;
    for (int t = c->nall; t < c->pall; ++t) c->all[t] = EE;
    for (int t = c->nlast; t < c->plast; ++t) c->last[t] = EE;
}

typedef struct {
    long S, B, nblk; /* seeds, prompts per seed, blocks per seed */
    int L;
    const wcols *cols;
    const REAL *G0, *zq, *Kp, *C, *dy;
    REAL inv_n;
    REAL *y;        /* forward output (S, B) */
    REAL *dK, *dC; /* backward: (nthreads, S, L, NP, EE) and (nthreads, S, L, L, E) partial sums */
} gs_args;

/* per-thread workspace: T_l (L+1), H_l = G0 T_l, G_l, W_l, U_l (L each), the block's G0 and zq */
typedef struct {
    vec *T, *H, *G, *W, *U, *g0, *q;
} gs_work;

static vec *gs_work_alloc(gs_work *w, int L) {
    vec *buf = vec_alloc((size_t)(L + 1) * EE + (size_t)L * (3 * EE + NP) + EE + E);
    if (!buf) return NULL;
    w->T = buf;
    w->H = w->T + (L + 1) * EE;
    w->G = w->H + L * EE;
    w->W = w->G + L * NP;
    w->U = w->W + L * EE;
    w->g0 = w->U + L * EE;
    w->q = w->g0 + EE;
    return buf;
}

/* a block of G0 and zq batch-last (lanes >= nv zero); `left` prompts may be read from the block on */
static void load_block(const REAL *G0, const REAL *zq, int nv, long left, vec *g0, vec *q) {
    transpose_rows(G0, EE, EE, nv, left * EE, g0);
    transpose_rows(zq, E, E, nv, left * E, q);
}

/* Forward over one block; fills w->T[0..L] (T_L only in column E-1), H, G, W, U. */
static void block_forward(const gs_args *a, long s, gs_work *w) {
    const int L = a->L;
    vec *T0 = w->T;
    for (int c = 0; c < EE; ++c) T0[c] = (vec){0};
    for (int i = 0; i < E; ++i) T0[i * E + i] += 1;
    for (int l = 0; l < L; ++l) {
        const vec *T = w->T + l * EE;
        vec *H = w->H + l * EE, *G = w->G + l * NP, *W = w->W + l * EE, *U = w->U + l * EE;
        vec *Tn = w->T + (l + 1) * EE;
        const REAL *K = a->Kp + (s * L + l) * NP * EE;
        const int m0 = l == L - 1 ? E - 1 : 0; /* the last layer is needed only in column E-1 */
        const int *act = l == L - 1 ? a->cols->last : a->cols->all, nact = l == L - 1 ? a->cols->nlast : a->cols->nall;
        if (l == 0) {
            for (int c = 0; c < EE; ++c) H[c] = w->g0[c];
            for (int j = 0; j < E; ++j)
                for (int k = j; k < E; ++k) G[pidx(j, k)] = w->g0[j * E + k];
        } else {
            for (int r = 0; r < E; ++r) /* H = G0 T */
                for (int c = 0; c < E; ++c) {
                    vec acc = {0};
                    for (int k = 0; k < E; ++k) acc += w->g0[r * E + k] * T[k * E + c];
                    H[r * E + c] = acc;
                }
            for (int j = 0; j < E; ++j) /* G = Tᵀ H, upper triangle */
                for (int k = j; k < E; ++k) {
                    vec acc = {0};
                    for (int r = 0; r < E; ++r) acc += T[r * E + j] * H[r * E + k];
                    G[pidx(j, k)] = acc;
                }
        }
        for (int t = 0; t < nact; ++t) { /* W = K(G) on the active entries (the others stay zero) */
            const int im = act[t];
            vec acc = {0};
            for (int p = 0; p < NP; ++p) acc += K[p * EE + im] * G[p];
            W[im] = acc;
        }
        for (int r = 0; r < E; ++r) /* U = T W */
            for (int m = m0; m < E; ++m) {
                vec acc = {0};
                if (l == 0)
                    acc = W[r * E + m];
                else
                    for (int t = 0; t < a->cols->nrows[m]; ++t) {
                        const int i = a->cols->rows[m][t];
                        acc += T[r * E + i] * W[i * E + m];
                    }
                U[r * E + m] = acc;
            }
        const REAL *c = a->C + ((s * L + l) * L) * E;
        for (int r = 0; r < E; ++r) /* T_{l+1} = T_l + inv_n sum_j U_j diag(c_j) */
            for (int m = m0; m < E; ++m) {
                vec acc = T[r * E + m];
                for (int j = 0; j <= l; ++j) acc += (a->inv_n * c[j * E + m]) * w->U[j * EE + r * E + m];
                Tn[r * E + m] = acc;
            }
    }
}

static void gs_forward_range(void *a_, long lo, long hi, int tid) {
    (void)tid;
    const gs_args *a = (const gs_args *)a_;
    gs_work w;
    vec *buf = gs_work_alloc(&w, a->L);
    if (!buf) return;
    for (long blk = lo; blk < hi; ++blk) {
        const long s = blk / a->nblk, b0 = (blk % a->nblk) * NB, off = s * a->B + b0;
        const int nv = (int)(a->B - b0 < NB ? a->B - b0 : NB);
        load_block(a->G0 + off * EE, a->zq + off * E, nv, a->B - b0, w.g0, w.q);
        block_forward(a, s, &w);
        const vec *TL = w.T + a->L * EE;
        vec acc = {0};
        for (int r = 0; r < E; ++r) acc -= w.q[r] * TL[r * E + E - 1];
        store_lanes(a->y + off, acc, nv);
    }
    free(buf);
}

/* The weight gradient dKp_l = sum_b G_l(b) dW_l(b)ᵀ is a reduction over the batch: each block's G_l and dW_l are
 * kept for CH blocks, then reduced in 3x3 register tiles (FMA-bound, not load-bound) into lane accumulators
 * dKacc (L, NPP, EEP); index EE of a dW row is a zero slot that pads the lists of active columns. */
#define CH 32
#define NPP ((NP + 2) / 3 * 3)
#define EEP (EE + 1)

static void dk_flush(const vec *Gc, const vec *dWc, int count, int L, const wcols *cols, vec *dKacc) {
    for (int l = 0; l < L; ++l) {
        const int *ac = l == L - 1 ? cols->last : cols->all, na = l == L - 1 ? cols->plast : cols->pall;
        for (int p0 = 0; p0 < NPP; p0 += 3)
            for (int t = 0; t < na; t += 3) {
                const int i0 = ac[t], i1 = ac[t + 1], i2 = ac[t + 2];
                vec a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a20 = {0}, a21 = {0}, a22 = {0};
                for (int cb = 0; cb < count; ++cb) {
                    const vec *g = Gc + (cb * L + l) * NPP + p0, *w = dWc + (cb * L + l) * EEP;
                    const vec g0 = g[0], g1 = g[1], g2 = g[2], w0 = w[i0], w1 = w[i1], w2 = w[i2];
                    a00 += g0 * w0, a01 += g0 * w1, a02 += g0 * w2;
                    a10 += g1 * w0, a11 += g1 * w1, a12 += g1 * w2;
                    a20 += g2 * w0, a21 += g2 * w1, a22 += g2 * w2;
                }
                vec *k0 = dKacc + (l * NPP + p0) * EEP, *k1 = k0 + EEP, *k2 = k1 + EEP;
                k0[i0] += a00, k0[i1] += a01, k0[i2] += a02;
                k1[i0] += a10, k1[i1] += a11, k1[i2] += a12;
                k2[i0] += a20, k2[i1] += a21, k2[i2] += a22;
            }
    }
}

/* add the lane sums of dKacc to out (L, NP, EE) and zero dKacc */
static void dk_dump(vec *dKacc, int L, REAL *out) {
    for (int l = 0; l < L; ++l)
        for (int p = 0; p < NP; ++p)
            for (int im = 0; im < EE; ++im) out[(l * NP + p) * EE + im] += hsum(dKacc[(l * NPP + p) * EEP + im]);
    memset(dKacc, 0, sizeof(vec) * (size_t)L * NPP * EEP);
}

static void gs_backward_range(void *a_, long lo, long hi, int tid) {
    const gs_args *a = (const gs_args *)a_;
    const int L = a->L;
    gs_work w;
    vec *buf = gs_work_alloc(&w, L);
    vec *dU = vec_alloc((size_t)L * EE + 2 * EE + NP);
    vec *dCacc = vec_alloc((size_t)a->S * L * L * E);
    vec *Gc = vec_alloc((size_t)CH * L * NPP), *dWc = vec_alloc((size_t)CH * L * EEP);
    vec *dKacc = vec_alloc((size_t)L * NPP * EEP);
    REAL *dK = a->dK + (size_t)tid * a->S * L * NP * EE;
    long cur = -1; /* the seed whose gradient dKacc holds */
    int cb = 0;    /* blocks held in Gc, dWc */
    if (!buf || !dU || !dCacc || !Gc || !dWc || !dKacc) goto done;
    vec *dT = dU + L * EE, *dW = dT + EE, *dG = dW + EE;
    for (long blk = lo; blk < hi; ++blk) {
        const long s = blk / a->nblk, b0 = (blk % a->nblk) * NB, off = s * a->B + b0;
        if (s != cur) {
            if (cb) dk_flush(Gc, dWc, cb, L, a->cols, dKacc);
            if (cur >= 0) dk_dump(dKacc, L, dK + cur * L * NP * EE);
            cur = s, cb = 0;
        }
        const int nv = (int)(a->B - b0 < NB ? a->B - b0 : NB);
        load_block(a->G0 + off * EE, a->zq + off * E, nv, a->B - b0, w.g0, w.q);
        block_forward(a, s, &w);
        const vec dy = load_lanes(a->dy + off, nv);
        for (int c = 0; c < EE; ++c) dT[c] = (vec){0};
        for (int c = 0; c < L * EE; ++c) dU[c] = (vec){0};
        for (int r = 0; r < E; ++r) dT[r * E + E - 1] = -dy * w.q[r];
        for (int l = L - 1; l >= 0; --l) {
            const int m0 = l == L - 1 ? E - 1 : 0; /* dT_L is zero outside column E-1 */
            const int *act = l == L - 1 ? a->cols->last : a->cols->all;
            const int nact = l == L - 1 ? a->cols->nlast : a->cols->nall;
            const REAL *c = a->C + ((s * L + l) * L) * E;
            vec *dCl = dCacc + ((s * L + l) * L) * E;
            for (int j = 0; j <= l; ++j) { /* T_{l+1} = T_l + inv_n sum_j U_j diag(c_j) */
                const vec *Uj = w.U + j * EE;
                vec *dUj = dU + j * EE;
                for (int m = m0; m < E; ++m) {
                    const REAL cm = a->inv_n * c[j * E + m];
                    vec acc = {0};
                    for (int r = 0; r < E; ++r) {
                        dUj[r * E + m] += cm * dT[r * E + m];
                        acc += dT[r * E + m] * Uj[r * E + m];
                    }
                    dCl[j * E + m] += a->inv_n * acc;
                }
            }
            const vec *T = w.T + l * EE, *H = w.H + l * EE, *G = w.G + l * NP, *W = w.W + l * EE;
            const vec *dUl = dU + l * EE;
            for (int c2 = 0; c2 < EE; ++c2) dW[c2] = (vec){0};
            for (int t = 0; t < nact; ++t) { /* U_l = T_l W_l: dW = T_lᵀ dU_l on the active entries */
                const int im = act[t], i = im / E, m = im % E;
                vec acc = {0};
                if (l == 0)
                    acc = dUl[im];
                else
                    for (int r = 0; r < E; ++r) acc += T[r * E + i] * dUl[r * E + m];
                dW[im] = acc;
            }
            /* W_l = Kp_l(G_l): dKp_l = sum_b G_l dW_lᵀ, reduced over CH blocks at a time (dk_flush) */
            memcpy(Gc + (cb * L + l) * NPP, G, sizeof(vec) * NP);
            memcpy(dWc + (cb * L + l) * EEP, dW, sizeof(vec) * EE);
            if (l == 0) break; /* T_0 = I is constant */
            for (int t = 0; t < nact; ++t) { /* dT_l += dU_l W_lᵀ */
                const int im = act[t], i = im / E, m = im % E;
                for (int r = 0; r < E; ++r) dT[r * E + i] += dUl[r * E + m] * W[im];
            }
            const REAL *K = a->Kp + (s * L + l) * NP * EE;
            for (int p = 0; p < NP; ++p) { /* dG_p = sum_{i,m} Kp[p][i,m] dW[i,m] */
                vec acc = {0};
                for (int t = 0; t < nact; ++t) acc += K[p * EE + act[t]] * dW[act[t]];
                dG[p] = acc;
            }
            for (int r = 0; r < E; ++r) /* G_l = T_lᵀ H_l: dT_l += H_l (D + Dᵀ), D the upper-triangular dG */
                for (int k = 0; k < E; ++k) {
                    vec acc = dT[r * E + k];
                    for (int j = 0; j < E; ++j) acc += (REAL)(j == k ? 2 : 1) * H[r * E + j] * dG[pidx(j, k)];
                    dT[r * E + k] = acc;
                }
        }
        if (++cb == CH) dk_flush(Gc, dWc, cb, L, a->cols, dKacc), cb = 0;
    }
    if (cb) dk_flush(Gc, dWc, cb, L, a->cols, dKacc);
    if (cur >= 0) dk_dump(dKacc, L, dK + cur * L * NP * EE);
    REAL *dC = a->dC + (size_t)tid * a->S * L * L * E;
    for (long i = 0; i < a->S * L * L * E; ++i) dC[i] = hsum(dCacc[i]);
done:
    free(dKacc);
    free(dWc);
    free(Gc);
    free(dCacc);
    free(dU);
    free(buf);
}

void gram_space_forward(long S, long B, int L, const int *active, const REAL *G0, const REAL *zq, const REAL *Kp,
                        const REAL *C, REAL inv_n, REAL *y, int nthreads) {
    const long nblk = (B + NB - 1) / NB;
    wcols cols;
    wcols_init(&cols, active);
    gs_args a = {S, B, nblk, L, &cols, G0, zq, Kp, C, NULL, inv_n, y, NULL, NULL};
    parallel(gs_forward_range, &a, S * nblk, nthreads);
}

/* dK and dC must hold nthreads * S * L * NP * EE and nthreads * S * L * L * E values (per-thread partial sums;
 * unused threads' stay zero) */
void gram_space_backward(long S, long B, int L, const int *active, const REAL *G0, const REAL *zq, const REAL *Kp,
                         const REAL *C, REAL inv_n, const REAL *dy, REAL *dK, REAL *dC, int nthreads) {
    const long nblk = (B + NB - 1) / NB;
    wcols cols;
    wcols_init(&cols, active);
    memset(dK, 0, sizeof(REAL) * (size_t)nthreads * S * L * NP * EE);
    memset(dC, 0, sizeof(REAL) * (size_t)nthreads * S * L * L * E);
    gs_args a = {S, B, nblk, L, &cols, G0, zq, Kp, C, dy, inv_n, NULL, dK, dC};
    parallel(gs_backward_range, &a, S * nblk, nthreads);
}

/* ---- the sparse mode (Ahn et al.): the state is g = X_ctxᵀ y_ctx ------------------------------------------- */

typedef struct {
    long S, B, nblk;
    int L;
    const REAL *G0, *zq, *A, *dy;
    REAL inv_n;
    REAL *y, *dA; /* dA: (nthreads, S, L, D, D) partial sums */
} sp_args;

static void sp_range(void *a_, long lo, long hi, int tid) {
    const sp_args *a = (const sp_args *)a_;
    const int L = a->L;
    vec *buf = vec_alloc((size_t)EE + E + 2 * L * D + 2 * D + (size_t)a->S * L * D * D);
    if (!buf) return;
    vec *g0 = buf, *q = g0 + EE, *gs = q + E, *us = gs + L * D, *dg = us + L * D, *du = dg + D, *dAacc = du + D;
    for (long blk = lo; blk < hi; ++blk) {
        const long s = blk / a->nblk, b0 = (blk % a->nblk) * NB, off = s * a->B + b0;
        const int nv = (int)(a->B - b0 < NB ? a->B - b0 : NB);
        load_block(a->G0 + off * EE, a->zq + off * E, nv, a->B - b0, g0, q);
        for (int k = 0; k < D; ++k) gs[k] = g0[D * E + k];
        for (int l = 0; l < L; ++l) { /* u_l = g_l A_l, g_{l+1} = g_l - (G_xx/n) u_l */
            const REAL *A = a->A + (s * L + l) * D * D;
            const vec *g = gs + l * D;
            vec *u = us + l * D;
            for (int k = 0; k < D; ++k) {
                vec acc = {0};
                for (int j = 0; j < D; ++j) acc += g[j] * A[j * D + k];
                u[k] = acc;
            }
            if (l == L - 1) break;
            for (int j = 0; j < D; ++j) {
                vec acc = {0};
                for (int k = 0; k < D; ++k) acc += g0[j * E + k] * u[k];
                gs[(l + 1) * D + j] = g[j] - a->inv_n * acc;
            }
        }
        if (!a->dy) { /* y = x_qᵀ (sum_l u_l)/n - y_q */
            vec acc = {0};
            for (int l = 0; l < L; ++l)
                for (int k = 0; k < D; ++k) acc += q[k] * us[l * D + k];
            store_lanes(a->y + off, a->inv_n * acc - q[D], nv);
            continue;
        }
        const vec dy = a->inv_n * load_lanes(a->dy + off, nv);
        for (int l = L - 1; l >= 0; --l) {
            const REAL *A = a->A + (s * L + l) * D * D;
            vec *dA = dAacc + (s * L + l) * D * D;
            const vec *g = gs + l * D;
            for (int k = 0; k < D; ++k) { /* du_l = dy x_q/n - (G_xx/n) dg_{l+1} (G_xx symmetric) */
                vec acc = {0};
                if (l < L - 1)
                    for (int j = 0; j < D; ++j) acc += g0[k * E + j] * dg[j];
                du[k] = dy * q[k] - a->inv_n * acc;
            }
            for (int j = 0; j < D; ++j) /* dA_l += g_lᵀ du_l */
                for (int k = 0; k < D; ++k) dA[j * D + k] += g[j] * du[k];
            if (l == 0) break;
            for (int j = 0; j < D; ++j) { /* dg_l = dg_{l+1} + A_l du_l */
                vec acc = l < L - 1 ? dg[j] : (vec){0};
                for (int k = 0; k < D; ++k) acc += A[j * D + k] * du[k];
                dg[j] = acc;
            }
        }
    }
    if (a->dy) {
        REAL *dA = a->dA + (size_t)tid * a->S * L * D * D;
        for (long i = 0; i < a->S * L * D * D; ++i) dA[i] = hsum(dAacc[i]);
    }
    free(buf);
}

void sparse_forward(long S, long B, int L, const REAL *G0, const REAL *zq, const REAL *A, REAL inv_n, REAL *y,
                    int nthreads) {
    const long nblk = (B + NB - 1) / NB;
    sp_args a = {S, B, nblk, L, G0, zq, A, NULL, inv_n, y, NULL};
    parallel(sp_range, &a, S * nblk, nthreads);
}

/* dA must hold nthreads * S * L * D * D values (per-thread partial sums; unused threads' stay zero) */
void sparse_backward(long S, long B, int L, const REAL *G0, const REAL *zq, const REAL *A, REAL inv_n,
                     const REAL *dy, REAL *dA, int nthreads) {
    const long nblk = (B + NB - 1) / NB;
    memset(dA, 0, sizeof(REAL) * (size_t)nthreads * S * L * D * D);
    sp_args a = {S, B, nblk, L, G0, zq, A, dy, inv_n, NULL, dA};
    parallel(sp_range, &a, S * nblk, nthreads);
}

/* ManifoldAdam's CPU kernels (icl/optim/manifold_kernels.py; Brantner 2023, arXiv 2305.16901).

   cayley_solve_*: X = (I - S/2)^{-1} S for k p x p systems, Gaussian elimination with partial pivoting on
   [T | S], then back substitution, in the data's precision (as LAPACK's getrf + getrs).

   adam_step_*: one whole ManifoldAdam step (closed-form Cayley retraction) of k Stiefel or Grassmann
   parameters, in one call: the four products go to the BLAS gemm that torch itself uses (its address is
   handed over by set_blas), the elementwise work is fused into two passes, nothing is allocated. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*gemm_f32)(const char *, const char *, const int *, const int *, const int *, const float *,
                         const float *, const int *, const float *, const int *, const float *, float *,
                         const int *);
typedef void (*gemm_f64)(const char *, const char *, const int *, const int *, const int *, const double *,
                         const double *, const int *, const double *, const int *, const double *, double *,
                         const int *);
static gemm_f32 sgemm_ptr;
static gemm_f64 dgemm_ptr;

/* The Fortran gemm entries (column-major, 32-bit integers) of the BLAS torch is linked against. */
void set_blas(void *s, void *d) {
    sgemm_ptr = (gemm_f32)s;
    dgemm_ptr = (gemm_f64)d;
}

/* C (column-major m x n, ldc) = alpha op(A) op(B) + beta C.  The sizes are passed as pointers to 64-bit
   integers: on a little-endian machine an LP64 BLAS reads the same values from them as an ILP64 one. */
static inline void gemm_f(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    sgemm_ptr(&ta, &tb, (int *)&m, (int *)&n, (int *)&k, &alpha, A, (int *)&lda, B, (int *)&ldb, &beta, C,
              (int *)&ldc);
}
static inline void gemm_d(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha, const double *A,
                          int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
    dgemm_ptr(&ta, &tb, (int *)&m, (int *)&n, (int *)&k, &alpha, A, (int *)&lda, B, (int *)&ldb, &beta, C,
              (int *)&ldc);
}

static inline void axpy_f32(float *restrict y, const float *restrict x, float a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] -= a * x[j];
}
static inline void axpy_f64(double *restrict y, const double *restrict x, double a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] -= a * x[j];
}

/* X = (I - S/2)^{-1} S for one p x p system: S and X row-major with row stride s_rs / x_rs; w: the augmented
   matrix [T | S], p rows of 2 pp numbers, pp = p rounded up to a multiple of 16 (solve_scratch in
   manifold_kernels.py), zero-padded.  The row operations run over whole aligned stretches of a row: an
   elimination step updates the row from the multiple of 16 at or below column c + 1 on (the extra numbers are
   entries left of the pivot column, never read again), the back substitution whole padded rows of S, so that
   every update is full vectors (the remainder loops of short rows cost more than their arithmetic).  The
   numbers that are read are those of the textbook elimination, in the same order. */
#define SOLVE1(NAME, REAL, AXPY)                                                                             \
static void NAME(int64_t p, const REAL *Sb, int64_t s_rs, REAL *Xb, int64_t x_rs, REAL *w) {                 \
    const int64_t pp = (p + 15) & ~(int64_t)15, ld = 2 * pp;                                                 \
    for (int64_t i = 0; i < p; i++) {                                                                        \
        REAL *Ti = w + i * ld;                                                                               \
        for (int64_t j = 0; j < ld; j++) Ti[j] = 0;                                                          \
        for (int64_t j = 0; j < p; j++) {                                                                    \
            REAL s = Sb[i * s_rs + j];                                                                       \
            Ti[pp + j] = s;                                                                                  \
            Ti[j] = (REAL)(i == j) - (REAL)0.5 * s;                                                          \
        }                                                                                                    \
    }                                                                                                        \
    for (int64_t c = 0; c < p; c++) {                                                                        \
        int64_t piv = c;                                                                                     \
        REAL best = fabs(w[c * ld + c]);                                                                     \
        for (int64_t i = c + 1; i < p; i++)                                                                  \
            if (fabs(w[i * ld + c]) > best) { best = fabs(w[i * ld + c]); piv = i; }                         \
        if (piv != c)                                                                                        \
            for (int64_t j = 0; j < ld; j++) {                                                               \
                REAL t = w[c * ld + j]; w[c * ld + j] = w[piv * ld + j]; w[piv * ld + j] = t;                \
            }                                                                                                \
        const REAL *Tc = w + c * ld;                                                                         \
        const REAL inv = (REAL)1 / Tc[c];                                                                    \
        const int64_t a = (c + 1) & ~(int64_t)15;                                                            \
        for (int64_t i = c + 1; i < p; i++) {                                                                \
            REAL *Ti = w + i * ld;                                                                           \
            const REAL f = Ti[c] * inv;                                                                      \
            if (f == 0) continue;                                                                            \
            AXPY(Ti + a, Tc + a, f, ld - a);                                                                 \
        }                                                                                                    \
    }                                                                                                        \
    for (int64_t i = p - 1; i >= 0; i--) {                                                                   \
        REAL *Bi = w + i * ld + pp;                                                                          \
        const REAL *Ti = w + i * ld;                                                                         \
        for (int64_t l = i + 1; l < p; l++) AXPY(Bi, w + l * ld + pp, Ti[l], pp);                            \
        const REAL inv = (REAL)1 / Ti[i];                                                                    \
        REAL *Xi = Xb + i * x_rs;                                                                            \
        for (int64_t j = 0; j < p; j++) { Bi[j] *= inv; Xi[j] = Bi[j]; }                                     \
    }                                                                                                        \
}
SOLVE1(solve1_f32, float, axpy_f32)
SOLVE1(solve1_f64, double, axpy_f64)

/* For each of k systems (matrices `bs` apart, rows `rs` apart): X = (I - S/2)^{-1} S; w: the solve's scratch. */
#define SOLVE(NAME, REAL, ONE)                                                                               \
void NAME(int64_t k, int64_t p, const REAL *S, int64_t s_bs, int64_t s_rs, REAL *X, int64_t x_bs,            \
          int64_t x_rs, REAL *w) {                                                                           \
    for (int64_t b = 0; b < k; b++) ONE(p, S + b * s_bs, s_rs, X + b * x_bs, x_rs, w);                        \
}
SOLVE(cayley_solve_f32, float, solve1_f32)
SOLVE(cayley_solve_f64, double, solve1_f64)

/* Adam's update of n coordinates g (flat): m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, and the velocity
   w = -step_size m / (sqrt(v) / bc2_sqrt + eps). */
#define ADAM(NAME, REAL, SQRT)                                                                               \
static void NAME(int64_t n, const REAL *restrict g, REAL *restrict m, REAL *restrict v, REAL *restrict w,    \
                 REAL b1, REAL b2, REAL step_size, REAL bc2_sqrt, REAL e) {                                  \
    const REAL one_b1 = 1 - b1, one_b2 = 1 - b2, inv_bc2 = 1 / bc2_sqrt; /* (one division per number) */    \
    for (int64_t j = 0; j < n; j++) {                                                                        \
        const REAL gj = g[j], mm = b1 * m[j] + one_b1 * gj, vv = b2 * v[j] + one_b2 * gj * gj;               \
        m[j] = mm;                                                                                           \
        v[j] = vv;                                                                                           \
        w[j] = -step_size * mm / (SQRT(vv) * inv_bc2 + e);                                                   \
    }                                                                                                        \
}
ADAM(adam_f32, float, sqrtf)
ADAM(adam_f64, double, sqrt)

/* The new point, one row at a time: Y <- Y + D, the parameter's row P <- Y where P is given (a row-major
   parameter), and H = Y + D/2 written over D (n numbers).  (H written into a buffer of its own made this pass
   3-4x slower, by cache misses, than over D, which the product D = L K has just written.) */
#define MOVE(NAME, REAL)                                                                                     \
static void NAME(int64_t n, REAL *restrict y, REAL *restrict dh, REAL *restrict P) {                         \
    if (P)                                                                                                   \
        for (int64_t j = 0; j < n; j++) {                                                                    \
            const REAL yj = y[j], dj = dh[j];                                                                \
            y[j] = P[j] = yj + dj;                                                                           \
            dh[j] = yj + (REAL)0.5 * dj;                                                                     \
        }                                                                                                    \
    else                                                                                                     \
        for (int64_t j = 0; j < n; j++) {                                                                    \
            const REAL yj = y[j], dj = dh[j];                                                                \
            y[j] = yj + dj;                                                                                  \
            dh[j] = yj + (REAL)0.5 * dj;                                                                     \
        }                                                                                                    \
}
MOVE(move_f32, float)
MOVE(move_f64, double)

/* P (N x p, strides rs, cs) = Y (N x p, row stride ld): row by row where P is row-major, in 16 x 16 tiles
   where it is column-major, element by element otherwise. */
#define PUT(NAME, REAL)                                                                                      \
static void NAME(int64_t N, int64_t p, const REAL *restrict Y, int64_t ld, REAL *restrict P, int64_t rs,     \
                 int64_t cs) {                                                                               \
    if (cs == 1) {                                                                                           \
        for (int64_t r = 0; r < N; r++) memcpy(P + r * rs, Y + r * ld, p * sizeof(REAL));                    \
    } else if (rs == 1) {                                                                                    \
        for (int64_t r0 = 0; r0 < N; r0 += 16)                                                               \
            for (int64_t j0 = 0; j0 < p; j0 += 16)                                                           \
                for (int64_t j = j0; j < j0 + 16 && j < p; j++)                                              \
                    for (int64_t r = r0; r < r0 + 16 && r < N; r++) P[j * cs + r] = Y[r * ld + j];           \
    } else {                                                                                                 \
        for (int64_t r = 0; r < N; r++)                                                                      \
            for (int64_t j = 0; j < p; j++) P[r * rs + j * cs] = Y[r * ld + j];                              \
    }                                                                                                        \
}
PUT(put_f32, float)
PUT(put_f64, double)

/* One ManifoldAdam step of k parameters Y (N x p) with sections L (k x N x N, row-major, contiguous):

     C = G^T Lc            Lc = L (Stiefel, c = N columns) or Y_perp = L[:, p:] (Grassmann, c = N - p)
     A = (C_A)^T - C_A     (Stiefel: the first p columns, skewed; Grassmann has none)
     m <- b1 m + (1 - b1) C,  v <- b2 v + (1 - b2) C*C,  count <- count + 1 (the step t)
     W = -(lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)      (W's A block has a zero diagonal)
     S2 = A_W - B^T B / 2,  K_top = (I - S2/2)^{-1} S2 = 2(Sigma - I),  K_bottom = B + B K_top / 2
     D = L K,  Y <- Y + D (also written into the parameter),  H = Y + D/2 (over D),  Y_perp <- Y_perp - H B^T

   (icl.optim.manifolds.Stiefel.retract_batch_ derives it.)  grads / params: k pointers to N x p matrices with
   strides (g_rs, g_cs) / (p_rs, p_cs), the gradients row-major (g_cs = 1) or column-major (g_rs = 1);
   m, v: k x p x c; work: 2pc + p^2 + 2Np numbers (C, W, S2, K, D), then the solve's p x 2pp (SOLVE1). */
#define STEP(NAME, REAL, GEMM, ONE, ADAMF, MOVEF, PUTF)                                                      \
static void NAME(int64_t k, int64_t N, int64_t p, int skew, REAL *L, const int64_t *grads, int64_t g_rs, int64_t g_cs, \
          const int64_t *params, int64_t p_rs, int64_t p_cs, REAL *m, REAL *v, float *count, double lr,        \
          double beta1, double beta2, double eps, int maximize, REAL *work) {                                 \
    const int64_t c = skew ? N : N - p, off = skew ? p : 0, q = N - p;                                       \
    REAL *C = work, *W = C + p * c, *S = W + p * c, *K = S + p * p, *D = K + N * p, *sw = D + N * p;         \
    const REAL b1 = (REAL)beta1, b2 = (REAL)beta2;                                                           \
    for (int64_t b = 0; b < k; b++) {                                                                        \
        REAL *Lb = L + b * N * N, *mb = m + b * p * c, *vb = v + b * p * c;                                   \
        const REAL *G = (const REAL *)(intptr_t)grads[b];                                                     \
        REAL *P = (REAL *)(intptr_t)params[b];                                                               \
        /* C (p x c, row-major) = G^T Lc: column-major C^T = Lc^T G */                                        \
        if (g_cs == 1) /* G row-major */                                                                     \
            GEMM('N', 'T', c, p, N, maximize ? -1 : 1, Lb + (skew ? 0 : p), N, G, g_rs, 0, C, c);            \
        else /* G column-major (g_rs == 1) */                                                                \
            GEMM('N', 'N', c, p, N, maximize ? -1 : 1, Lb + (skew ? 0 : p), N, G, g_cs, 0, C, c);            \
        count[b] += 1.0f;                                                                                    \
        const double t = count[b];                                                                           \
        const REAL step_size = (REAL)(lr / (1 - pow(beta1, t)));                                             \
        const REAL bc2_sqrt = (REAL)sqrt(1 - pow(beta2, t));                                                 \
        if (skew) /* C's first p columns: G^T Y -> A = Y^T G - G^T Y */                                       \
            for (int64_t i = 0; i < p; i++) {                                                                \
                C[i * c + i] = 0;                                                                            \
                for (int64_t j = i + 1; j < p; j++) {                                                        \
                    const REAL a = C[j * c + i] - C[i * c + j];                                              \
                    C[i * c + j] = a;                                                                        \
                    C[j * c + i] = -a;                                                                       \
                }                                                                                            \
            }                                                                                                \
        ADAMF(p * c, C, mb, vb, W, b1, b2, step_size, bc2_sqrt, (REAL)eps);                                  \
        if (skew) /* exactly 0 on the diagonal, also where eps = 0 made it 0/0 */                              \
            for (int64_t i = 0; i < p; i++) W[i * c + i] = 0;                                                \
        /* S2 = A_W - Bt Bt^T / 2 (row-major p x p; Bt = W[:, off:], p x q): column-major S2^T = ... */       \
        for (int64_t i = 0; i < p; i++)                                                                      \
            for (int64_t j = 0; j < p; j++) S[i * p + j] = skew ? W[i * c + j] : 0;                          \
        GEMM('T', 'N', p, p, q, (REAL)-0.5, W + off, c, W + off, c, 1, S, p);                                \
        ONE(p, S, p, K, p, sw); /* K_top = (I - S2/2)^{-1} S2 */                                            \
        REAL *Kb = K + p * p, *M = S; /* K_bottom (q x p) = Bt^T (I + K_top / 2) = B Sigma (S2 is free) */        \
        for (int64_t i = 0; i < p * p; i++) M[i] = (REAL)0.5 * K[i];                                        \
        for (int64_t i = 0; i < p; i++) M[i * p + i] += 1;                                                   \
        GEMM('N', 'T', p, q, p, 1, M, p, W + off, c, 0, Kb, p);                                              \
        GEMM('N', 'N', p, N, N, 1, K, p, Lb, N, 0, D, p); /* D = L K (N x p) */                               \
        if (p_cs == 1) /* row-major parameter: written in the same pass */                                   \
            for (int64_t r = 0; r < N; r++) MOVEF(p, Lb + r * N, D + r * p, P + r * p_rs);                   \
        else {                                                                                               \
            for (int64_t r = 0; r < N; r++) MOVEF(p, Lb + r * N, D + r * p, NULL);                           \
            PUTF(N, p, Lb, N, P, p_rs, p_cs);                                                                \
        }                                                                                                    \
        /* Y_perp (N x q, row-major, row stride N) -= H Bt: column-major Y_perp^T -= Bt^T H^T */              \
        GEMM('N', 'N', q, N, p, -1, W + off, c, D, p, 1, Lb + p, N);                                         \
    }                                                                                                        \
}
STEP(step_f32, float, gemm_f, solve1_f32, adam_f32, move_f32, put_f32)
STEP(step_f64, double, gemm_d, solve1_f64, adam_f64, move_f64, put_f64)

/* The entry points: the step's arguments packed, so that a call from Python converts four pointers, not twenty
   numbers (ctypes converts each argument; the conversions cost more than half the Python time around a step).
   ia: k, N, p, skew, L, g_rs, g_cs, p_rs, p_cs, m, v, count, work, maximize; fa: lr, beta1, beta2, eps. */
#define PACKED(NAME, REAL, STEPF)                                                                             \
void NAME(const int64_t *ia, const double *fa, const int64_t *grads, const int64_t *params) {                 \
    STEPF(ia[0], ia[1], ia[2], (int)ia[3], (REAL *)(intptr_t)ia[4], grads, ia[5], ia[6], params, ia[7], ia[8],    \
          (REAL *)(intptr_t)ia[9], (REAL *)(intptr_t)ia[10], (float *)(intptr_t)ia[11], fa[0], fa[1], fa[2],     \
          fa[3], (int)ia[13], (REAL *)(intptr_t)ia[12]);                                                       \
}
PACKED(adam_step_f32, float, step_f32)
PACKED(adam_step_f64, double, step_f64)

/* Y <- Y (3I - Y^T Y) / 2 = Y + Y E, E = (I - Y^T Y) / 2, for the Y blocks (first p columns) of k sections L
   (k x N x N, row-major): one Newton-Schulz step to the polar factor (Stiefel.reorthonormalize_point_).  Y^T Y
   is formed in double precision (its distance from I is what the step corrects); E is as small as that distance,
   so Y E is formed in the data's precision and added to Y (one rounding, as the double formula rounded once).
   w: 2Np + 2p^2 doubles. */
#define POLAR(NAME, REAL, GEMM)                                                                              \
void NAME(int64_t k, int64_t N, int64_t p, REAL *L, double *w) {                                             \
    double *Y = w, *S = w + N * p;                                                                           \
    REAL *E = (REAL *)(S + p * p), *Z = E + p * p;                                                           \
    for (int64_t b = 0; b < k; b++) {                                                                        \
        REAL *Lb = L + b * N * N;                                                                            \
        for (int64_t r = 0; r < N; r++)                                                                      \
            for (int64_t j = 0; j < p; j++) Y[r * p + j] = (double)Lb[r * N + j];                            \
        gemm_d('N', 'T', p, p, N, 1, Y, p, Y, p, 0, S, p); /* S = Y^T Y */                                   \
        for (int64_t i = 0; i < p; i++)                                                                      \
            for (int64_t j = 0; j < p; j++) E[i * p + j] = (REAL)(0.5 * ((double)(i == j) - S[i * p + j]));   \
        GEMM('N', 'N', p, N, p, 1, E, p, Lb, N, 0, Z, p); /* Z = Y E (N x p, row-major) */                   \
        for (int64_t r = 0; r < N; r++)                                                                      \
            for (int64_t j = 0; j < p; j++) Lb[r * N + j] += Z[r * p + j];                                   \
    }                                                                                                        \
}
POLAR(polar_point_f32, float, gemm_f)
POLAR(polar_point_f64, double, gemm_d)

/* The SMPL forward's small loops on the CPU, for calls that need no gradient (see cpu.py).
 * Each has a plain-torch twin in reference.py: rodrigues <- rodrigues_fast, chain <-
 * kinematic_chain + skinning_transforms, skin <- skin + ApplyTransforms.
 *
 * Every function comes in float (_f32) and double (_f64). Written with GCC/Clang vector
 * extensions, no intrinsics, so it builds for any target those compilers know.
 */
#include <math.h>

#define MAX_JOINTS 64

int max_joints(void) { return MAX_JOINTS; }

/* rodrigues: axis-angle w (n, 3) -> rotation matrices R (n, 3, 3), row-major.
 * R = c I + a K + b w w^T with t = |w|, c = cos t, a = sin(t)/t, b = (1 - cos t)/t^2, all from
 * h = sin(t/2)/(t/2) (1 at t = 0): a = h cos(t/2), b = h^2/2, c = 1 - b t^2, so nothing cancels at
 * small angles (the same formulas as reference.rodrigues_fast). */
#define DEFINE_RODRIGUES(NAME, T, SIN, COS, SQRT)                                              \
void NAME(long n, const T *restrict w, T *restrict R)                                          \
{                                                                                              \
    for (long i = 0; i < n; i++) {                                                             \
        const T x = w[3 * i], y = w[3 * i + 1], z = w[3 * i + 2];                              \
        const T t2 = x * x + y * y + z * z, half = SQRT(t2) / 2;                               \
        const T h = half > 0 ? SIN(half) / half : 1;                                           \
        const T a = h * COS(half), b = h * h / 2, c = 1 - b * t2;                              \
        T *r = R + 9 * i;                                                                      \
        r[0] = b * x * x + c;     r[1] = b * x * y - a * z; r[2] = b * x * z + a * y;          \
        r[3] = b * y * x + a * z; r[4] = b * y * y + c;     r[5] = b * y * z - a * x;          \
        r[6] = b * z * x - a * y; r[7] = b * z * y + a * x; r[8] = b * z * z + c;              \
    }                                                                                          \
}

DEFINE_RODRIGUES(rodrigues_f32, float, sinf, cosf, sqrtf)
DEFINE_RODRIGUES(rodrigues_f64, double, sin, cos, sqrt)

/* chain: local rotations R (B, J, 3, 3) and rest joints Jr (B, J, 3) -> the skinning transforms
 * A (B, J, 12) = [G_j | t_j - G_j Jr_j] (rows of the 3x4) and the posed joints t (B, J, 3), with
 * G_j = G_parent R_j and t_j = G_parent (Jr_j - Jr_parent) + t_parent, walking the joints in index
 * order (parents[j] < j; parents[0] = -1). */
#define DEFINE_CHAIN(NAME, T)                                                                  \
void NAME(long B, long J, const int *restrict parents, const T *restrict R,                    \
          const T *restrict Jr, T *restrict A, T *restrict t)                                  \
{                                                                                              \
    T G[9 * MAX_JOINTS];                                                                       \
    for (long b = 0; b < B; b++) {                                                             \
        const T *r = R + 9 * J * b, *jr = Jr + 3 * J * b;                                      \
        T *a = A + 12 * J * b, *tb = t + 3 * J * b;                                            \
        for (long j = 0; j < J; j++) {                                                         \
            T *g = G + 9 * j, *tj = tb + 3 * j;                                                \
            const T *rj = r + 9 * j;                                                           \
            const long p = parents[j];                                                         \
            if (p < 0) {                                                                       \
                for (int e = 0; e < 9; e++) g[e] = rj[e];                                      \
                for (int e = 0; e < 3; e++) tj[e] = jr[3 * j + e];                             \
            } else {                                                                           \
                const T *gp = G + 9 * p, *tp = tb + 3 * p;                                     \
                T bone[3];                                                                     \
                for (int e = 0; e < 3; e++) bone[e] = jr[3 * j + e] - jr[3 * p + e];           \
                for (int row = 0; row < 3; row++) {                                            \
                    const T *gr = gp + 3 * row;                                                \
                    for (int col = 0; col < 3; col++)                                          \
                        g[3 * row + col] = gr[0] * rj[col] + gr[1] * rj[3 + col] + gr[2] * rj[6 + col]; \
                    tj[row] = gr[0] * bone[0] + gr[1] * bone[1] + gr[2] * bone[2] + tp[row];   \
                }                                                                              \
            }                                                                                  \
            T *aj = a + 12 * j;                                                                \
            for (int row = 0; row < 3; row++) {                                                \
                const T *gr = g + 3 * row;                                                     \
                aj[4 * row] = gr[0]; aj[4 * row + 1] = gr[1]; aj[4 * row + 2] = gr[2];         \
                aj[4 * row + 3] = tj[row] - (gr[0] * jr[3 * j] + gr[1] * jr[3 * j + 1] + gr[2] * jr[3 * j + 2]); \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_CHAIN(chain_f32, float)
DEFINE_CHAIN(chain_f64, double)

/* skin: linear blend skinning in one pass over the vertices. For samples b in [b0, b1) and
 * vertices v in [v0, v1):
 *     out[b, v] = sum_k w_vk A[b, j_vk] [x; y; z; 1] + shift[b]
 * with the skinning weights in CSR form (rowptr, col, val: a vertex's few joints and weights)
 * and A[b, j] joint j's 3x4 transform, row-major (12 numbers).
 * planes holds the unposed vertices as coordinate planes: (b, c, v) at planes[b*sb + c*sc + (v - v0)];
 * out holds the posed ones interleaved: (b, v, c) at out[b*ob + 3*(v - v0) + c]. shift (B, 3) or NULL.
 * Each joint's transform is kept as four column vectors (R's three columns and t, padded to four
 * lanes), so a (weight, joint) pair costs four vector multiply-adds and nothing of the blended
 * transform goes to memory. */
#define DEFINE_SKIN(NAME, T, VEC)                                                              \
typedef T VEC __attribute__((vector_size(4 * sizeof(T))));                                    \
void NAME(long b0, long b1, long v0, long v1, long J,                                          \
          const T *restrict planes, long sb, long sc,                                          \
          const T *restrict A, const int *restrict rowptr, const int *restrict col,            \
          const T *restrict val, const T *restrict shift, T *restrict out, long ob)            \
{                                                                                              \
    VEC cols[4 * MAX_JOINTS];                                                                  \
    for (long b = b0; b < b1; b++) {                                                           \
        const T *a = A + b * J * 12;                                                           \
        for (long j = 0; j < J; j++)                                                           \
            for (int c = 0; c < 4; c++)                                                        \
                cols[4 * j + c] = (VEC){a[12 * j + c], a[12 * j + 4 + c], a[12 * j + 8 + c], 0};\
        const T *px = planes + b * sb, *py = px + sc, *pz = py + sc;                           \
        VEC s = {0, 0, 0, 0};                                                                  \
        if (shift) s = (VEC){shift[3 * b], shift[3 * b + 1], shift[3 * b + 2], 0};            \
        T *o = out + b * ob;                                                                   \
        for (long v = v0; v < v1; v++) {                                                       \
            const long i = v - v0;                                                             \
            const T x = px[i], y = py[i], z = pz[i];                                           \
            VEC p = s;                                                                         \
            for (int k = rowptr[v]; k < rowptr[v + 1]; k++) {                                  \
                const VEC *m = cols + 4 * col[k];                                              \
                p += val[k] * (m[0] * x + m[1] * y + m[2] * z + m[3]);                         \
            }                                                                                  \
            o[3 * i] = p[0];                                                                   \
            o[3 * i + 1] = p[1];                                                               \
            o[3 * i + 2] = p[2];                                                               \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_SKIN(skin_f32, float, vec4f)
DEFINE_SKIN(skin_f64, double, vec4d)

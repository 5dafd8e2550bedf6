/* Linear blend skinning on the CPU in one pass over the vertices (see cpu_skin.py).
 *
 * For samples b in [b0, b1) and vertices v in [v0, v1):
 *     out[b, v] = sum_k w_vk A[b, j_vk] [x; y; z; 1] + shift[b]
 * with the skinning weights in CSR form (rowptr, col, val: a vertex's few joints and weights)
 * and A[b, j] the 3x4 transform [R | t] of joint j, row-major (12 numbers).
 *
 * planes holds the unposed vertices as coordinate planes: (b, c, v) at planes[b*sb + c*sc + (v - v0)];
 * out holds the posed ones interleaved: (b, v, c) at out[b*ob + 3*(v - v0) + c]. shift (B, 3) or NULL.
 *
 * Each joint's transform is kept as four column vectors (R's three columns and t, padded to four
 * lanes), so a (weight, joint) pair costs four vector multiply-adds and nothing of the blended
 * transform is written to memory. Written with GCC/Clang vector extensions: no intrinsics, so it
 * builds for any target those compilers know.
 */

#define MAX_JOINTS 64

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

int max_joints(void) { return MAX_JOINTS; }

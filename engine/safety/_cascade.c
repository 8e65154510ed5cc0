/* The safety chain's compiled parts (resonera.engine.safety._cascade): the A-weighting filter's
 * second-order-section cascade first, then what cost the chain more as numpy calls than as
 * arithmetic.
 *
 * cascade(sos, x, y, zi, energy): filters the interleaved float32 block x, (frames, channels),
 * through the sections sos, (sections, 6) float64 as scipy.signal lays them out, into y, (channels,
 * frames) float64, carrying the state zi, (channels, sections, 2) float64, in place. With energy
 * true, y receives instead the running sum of the filtered signal's squares, channel by channel from
 * the block's first frame on: what the safety chain's level ceiling and exposure meter need (the
 * energy over any stretch is the difference of two values), in the same pass as the filter.
 *
 * Why not scipy's sosfilt: it filters one channel after the other, and each sample's recurrence
 * waits for the one before it, so the CPU idles most of each sample. Here the two channels of a
 * stereo block go through the cascade side by side in one vector register (GCC's vector
 * extensions: SSE2 on x86-64, NEON on ARM), which does two channels in about the time scipy takes
 * for one, and the float32 input is read as it comes, with no transposed float64 copy first.
 *
 * bank(sos, counts, x, y, zi): several cascades' running energies of the same block in one pass
 * (the level ceiling's A, C and unweighted measures), each bit for bit what cascade() gives it;
 * cascade_frames(): the DC blocker's float32 frames and their peak. true_peak(taps, history, x,
 * peak), skip_peak() and largest_magnitude(x): the limiter's true-peak detector (the 4x polyphase
 * interpolator of truepeak.py) and its quick test of a block.
 *
 * The per-block bookkeeping (issue 22, the chain's cost: each numpy call costs 1-3 us, and a
 * block made dozens): the delay lines (delay), the gain smoother's forward minimum and release
 * (forward_min, release), the limiter's required gains (required_gains), the level ceiling's
 * window sums, quick test and shares (append_running, window_test, window_shares), the meter's
 * delayed energy and its seconds (delay_running, second_energy). Each computes its values with
 * the operations of the numpy code it replaced, in the same order, NaN rules included: the
 * chain's output is bit for bit what it was (tests/engine/test_chain_compiled_parts.py keeps the
 * numpy versions and holds each part and the whole chain to them).
 *
 * Every value is computed with exactly the operations of scipy's cascade (transposed direct form
 * II, in the same order) and built with -ffp-contract=off, so that no multiply-add is fused: the
 * output is bit for bit scipy's (tests/device/test_aweighting.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef double pair __attribute__((vector_size(16)));

/* Sections the stereo path keeps in registers; longer cascades take the general path. */
#define STEREO_MAX_SECTIONS 8

/* Output modes of a cascade: y, (channels, frames) float64, gets the filtered signal or the
 * running energy; or the filtered signal goes to interleaved float32 frames like x (the DC
 * blocker's output, rounded from float64 once, as numpy's astype rounds it), and the largest
 * magnitude of those frames comes back (what largest_magnitude() would say of them: the limiter
 * after the DC blocker needs it, and the recurrence leaves time for it). */
enum { FILTERED, ENERGY, FRAMES };

/* The largest of a float32 peak and |v| so far; a NaN noted apart (a comparison drops it). */
static inline float
float_peak(float high, float v, int *nan)
{
    float m = fabsf(v);
    *nan |= m != m;
    return m > high ? m : high;
}

static double
stereo(const double *sos, Py_ssize_t sections, const float *x, Py_ssize_t frames, void *y,
       double *zi, int mode)
{
    pair b0[STEREO_MAX_SECTIONS], b1[STEREO_MAX_SECTIONS], b2[STEREO_MAX_SECTIONS];
    pair a1[STEREO_MAX_SECTIONS], a2[STEREO_MAX_SECTIONS];
    pair s0[STEREO_MAX_SECTIONS], s1[STEREO_MAX_SECTIONS];
    for (Py_ssize_t k = 0; k < sections; k++) {
        const double *c = sos + 6 * k;
        b0[k] = (pair){c[0], c[0]};
        b1[k] = (pair){c[1], c[1]};
        b2[k] = (pair){c[2], c[2]};
        a1[k] = (pair){c[4], c[4]};
        a2[k] = (pair){c[5], c[5]};
        s0[k] = (pair){zi[2 * k], zi[2 * (sections + k)]};
        s1[k] = (pair){zi[2 * k + 1], zi[2 * (sections + k) + 1]};
    }
    double *left = y, *right = left + frames;
    float *interleaved = y, high = 0.0f;
    int nan = 0;
    pair sum = {0.0, 0.0};
    for (Py_ssize_t n = 0; n < frames; n++) {
        pair u = {x[2 * n], x[2 * n + 1]};
        for (Py_ssize_t k = 0; k < sections; k++) {
            pair out = b0[k] * u + s0[k];
            s0[k] = b1[k] * u - a1[k] * out + s1[k];
            s1[k] = b2[k] * u - a2[k] * out;
            u = out;
        }
        if (mode == FRAMES) {
            interleaved[2 * n] = (float)u[0];
            interleaved[2 * n + 1] = (float)u[1];
            high = float_peak(float_peak(high, (float)u[0], &nan), (float)u[1], &nan);
            continue;
        }
        if (mode == ENERGY) {
            sum += u * u;
            u = sum;
        }
        left[n] = u[0];
        right[n] = u[1];
    }
    for (Py_ssize_t k = 0; k < sections; k++) {
        zi[2 * k] = s0[k][0];
        zi[2 * k + 1] = s1[k][0];
        zi[2 * (sections + k)] = s0[k][1];
        zi[2 * (sections + k) + 1] = s1[k][1];
    }
    return nan ? (double)NAN : (double)high;
}

static double
general(const double *sos, Py_ssize_t sections, const float *x, Py_ssize_t frames,
        Py_ssize_t channels, void *y, double *zi, int mode)
{
    float high = 0.0f;
    int nan = 0;
    for (Py_ssize_t ch = 0; ch < channels; ch++) {
        double *state = zi + 2 * sections * ch;
        double *out = (double *)y + frames * ch;
        float *interleaved = y;
        double sum = 0.0;
        for (Py_ssize_t n = 0; n < frames; n++) {
            double u = x[n * channels + ch];
            for (Py_ssize_t k = 0; k < sections; k++) {
                const double *c = sos + 6 * k;
                double *z = state + 2 * k;
                double v = c[0] * u + z[0];
                z[0] = c[1] * u - c[4] * v + z[1];
                z[1] = c[2] * u - c[5] * v;
                u = v;
            }
            if (mode == FRAMES) {
                interleaved[n * channels + ch] = (float)u;
                high = float_peak(high, (float)u, &nan);
                continue;
            }
            if (mode == ENERGY) {
                sum += u * u;
                u = sum;
            }
            out[n] = u;
        }
    }
    return nan ? (double)NAN : (double)high;
}

/* One second-order section of a stereo cascade, its coefficients and state side by side. */
typedef struct {
    pair b0, b1, b2, a1, a2, s0, s1;
} section;

static inline __attribute__((always_inline)) void
load_sections(section *into, const double *sos, const double *state, int count)
{
    for (int k = 0; k < count; k++) {
        const double *c = sos + 6 * k;
        into[k] = (section){{c[0], c[0]}, {c[1], c[1]}, {c[2], c[2]}, {c[4], c[4]}, {c[5], c[5]},
                            {state[2 * k], state[2 * (count + k)]},
                            {state[2 * k + 1], state[2 * (count + k) + 1]}};
    }
}

static inline __attribute__((always_inline)) void
store_sections(const section *from, double *state, int count)
{
    for (int k = 0; k < count; k++) {
        state[2 * k] = from[k].s0[0];
        state[2 * k + 1] = from[k].s1[0];
        state[2 * (count + k)] = from[k].s0[1];
        state[2 * (count + k) + 1] = from[k].s1[1];
    }
}

/* u through `count` sections, as stereo() computes it. */
static inline __attribute__((always_inline)) pair
through(section *sections, int count, pair u)
{
    for (int k = 0; k < count; k++) {
        section *q = &sections[k];
        pair out = q->b0 * u + q->s0;
        q->s0 = q->b1 * u - q->a1 * out + q->s1;
        q->s1 = q->b2 * u - q->a2 * out;
        u = out;
    }
    return u;
}

/* The safety chain's bank, A (3 sections), C (2) and unweighted (1), with its section counts
 * known to the compiler: every state in registers, where the general stereo_bank keeps them in
 * arrays it indexes at run time, in memory, and waits on each store (it took 4 times as long;
 * the operations are the same, so are the values). */
#define CHAIN_A 3
#define CHAIN_C 2
#define CHAIN_Z 1

static void
chain_bank(const double *sos, const float *x, Py_ssize_t frames, double *y, double *zi)
{
    section a[CHAIN_A], c[CHAIN_C], z[CHAIN_Z];
    double *za = zi, *zc = za + 4 * CHAIN_A, *zz = zc + 4 * CHAIN_C;
    load_sections(a, sos, za, CHAIN_A);
    load_sections(c, sos + 6 * CHAIN_A, zc, CHAIN_C);
    load_sections(z, sos + 6 * (CHAIN_A + CHAIN_C), zz, CHAIN_Z);
    pair sum_a = {0.0, 0.0}, sum_c = {0.0, 0.0}, sum_z = {0.0, 0.0};
    for (Py_ssize_t n = 0; n < frames; n++) {
        pair input = {x[2 * n], x[2 * n + 1]};
        pair ua = through(a, CHAIN_A, input);
        pair uc = through(c, CHAIN_C, input);
        pair uz = through(z, CHAIN_Z, input);
        sum_a += ua * ua;
        sum_c += uc * uc;
        sum_z += uz * uz;
        y[n] = sum_a[0];
        y[frames + n] = sum_a[1];
        y[2 * frames + n] = sum_c[0];
        y[3 * frames + n] = sum_c[1];
        y[4 * frames + n] = sum_z[0];
        y[5 * frames + n] = sum_z[1];
    }
    store_sections(a, za, CHAIN_A);
    store_sections(c, zc, CHAIN_C);
    store_sections(z, zz, CHAIN_Z);
}

/* Sections the stereo bank keeps side by side (every weighting's together). */
#define BANK_MAX_SECTIONS 16

/* Several cascades over the same stereo block in one pass, each into its running energy: the
 * weightings' recurrences do not depend on one another, so the CPU overlaps them where one
 * cascade alone leaves it waiting. Each filter's values are computed exactly as stereo() does. */
static void
stereo_bank(const double *sos, const Py_ssize_t *counts, Py_ssize_t filters, const float *x,
            Py_ssize_t frames, double *y, double *zi)
{
    pair b0[BANK_MAX_SECTIONS], b1[BANK_MAX_SECTIONS], b2[BANK_MAX_SECTIONS];
    pair a1[BANK_MAX_SECTIONS], a2[BANK_MAX_SECTIONS];
    pair s0[BANK_MAX_SECTIONS], s1[BANK_MAX_SECTIONS];
    pair sums[BANK_MAX_SECTIONS];
    Py_ssize_t k = 0;
    for (Py_ssize_t f = 0; f < filters; f++) {
        double *state = zi + 4 * k; /* this filter's (2 channels, counts[f] sections, 2) */
        for (Py_ssize_t j = 0; j < counts[f]; j++, k++) {
            const double *c = sos + 6 * k;
            b0[k] = (pair){c[0], c[0]};
            b1[k] = (pair){c[1], c[1]};
            b2[k] = (pair){c[2], c[2]};
            a1[k] = (pair){c[4], c[4]};
            a2[k] = (pair){c[5], c[5]};
            s0[k] = (pair){state[2 * j], state[2 * (counts[f] + j)]};
            s1[k] = (pair){state[2 * j + 1], state[2 * (counts[f] + j) + 1]};
        }
        sums[f] = (pair){0.0, 0.0};
    }
    for (Py_ssize_t n = 0; n < frames; n++) {
        pair input = {x[2 * n], x[2 * n + 1]};
        k = 0;
        for (Py_ssize_t f = 0; f < filters; f++) {
            pair u = input;
            for (Py_ssize_t j = 0; j < counts[f]; j++, k++) {
                pair out = b0[k] * u + s0[k];
                s0[k] = b1[k] * u - a1[k] * out + s1[k];
                s1[k] = b2[k] * u - a2[k] * out;
                u = out;
            }
            sums[f] += u * u;
            y[2 * f * frames + n] = sums[f][0];
            y[(2 * f + 1) * frames + n] = sums[f][1];
        }
    }
    k = 0;
    for (Py_ssize_t f = 0; f < filters; f++) {
        double *state = zi + 4 * k;
        for (Py_ssize_t j = 0; j < counts[f]; j++, k++) {
            state[2 * j] = s0[k][0];
            state[2 * j + 1] = s1[k][0];
            state[2 * (counts[f] + j)] = s0[k][1];
            state[2 * (counts[f] + j) + 1] = s1[k][1];
        }
    }
}


/* The largest of a and |v|, NaN once either is (fmax would drop a NaN: a non-finite sample must
 * reach the caller). */
static inline double
nan_max_abs(double a, double v)
{
    double m = fabs(v);
    return (m > a || m != m) && a == a ? m : a;
}

/* Frames of the interpolator's work array at a time (it stays in the L1 cache). */
#define PEAK_CHUNK 512
/* The interpolated points per sample (4x oversampling: the sample and three after it). */
#define PEAK_PHASES 3

/* The detector's history, its last `kept` frames of the stream (float64), moved on past x. */
static void
advance_history(double *history, Py_ssize_t kept, const float *x, Py_ssize_t frames,
                Py_ssize_t channels)
{
    if (frames >= kept) {
        for (Py_ssize_t i = 0; i < kept * channels; i++) {
            history[i] = (double)x[(frames - kept) * channels + i];
        }
    } else {
        memmove(history, history + frames * channels,
                (size_t)((kept - frames) * channels) * sizeof(double));
        for (Py_ssize_t i = 0; i < frames * channels; i++) {
            history[(kept - frames) * channels + i] = (double)x[i];
        }
    }
}

static void
interpolated_peak(const double *taps, Py_ssize_t span, double *history,
                  const float *x, Py_ssize_t frames, Py_ssize_t channels, double *peak)
{
    Py_ssize_t kept = span - 1, centre = span / 2 - 1;
    double padded[PEAK_CHUNK + 64];
    for (Py_ssize_t i = 0; i < frames; i++) {
        peak[i] = 0.0;
    }
    for (Py_ssize_t ch = 0; ch < channels; ch++) {
        for (Py_ssize_t start = 0; start < frames; start += PEAK_CHUNK) {
            Py_ssize_t length = frames - start < PEAK_CHUNK ? frames - start : PEAK_CHUNK;
            /* the stream from `kept` frames before the chunk: history, then the block */
            for (Py_ssize_t t = 0; t < length + kept; t++) {
                Py_ssize_t at = start + t - kept; /* frame in the block; < 0: in history */
                padded[t] = at < 0 ? history[(kept + at) * channels + ch]
                                   : (double)x[at * channels + ch];
            }
            for (Py_ssize_t i = 0; i < length; i++) {
                peak[start + i] = nan_max_abs(peak[start + i], padded[i + centre]);
            }
            /* four frames at a time and every phase together: six sums in registers at once
             * (one alone would wait on its own additions), each point's dot product in the
             * order of its taps */
            Py_ssize_t i = 0;
            for (; i + 3 < length; i += 4) {
                pair sums[PEAK_PHASES][2];
                for (Py_ssize_t j = 0; j < span; j++) {
                    pair low = {padded[i + j], padded[i + j + 1]};
                    pair high = {padded[i + j + 2], padded[i + j + 3]};
                    for (Py_ssize_t p = 0; p < PEAK_PHASES; p++) {
                        pair tap = {taps[p * span + j], taps[p * span + j]};
                        sums[p][0] = j ? sums[p][0] + low * tap : low * tap;
                        sums[p][1] = j ? sums[p][1] + high * tap : high * tap;
                    }
                }
                for (Py_ssize_t p = 0; p < PEAK_PHASES; p++) {
                    for (int h = 0; h < 2; h++) {
                        double *at = peak + start + i + 2 * h;
                        at[0] = nan_max_abs(at[0], sums[p][h][0]);
                        at[1] = nan_max_abs(at[1], sums[p][h][1]);
                    }
                }
            }
            for (; i < length; i++) {
                for (Py_ssize_t p = 0; p < PEAK_PHASES; p++) {
                    const double *row = taps + p * span;
                    double sum = padded[i] * row[0];
                    for (Py_ssize_t j = 1; j < span; j++) {
                        sum += padded[i + j] * row[j];
                    }
                    peak[start + i] = nan_max_abs(peak[start + i], sum);
                }
            }
        }
    }
    advance_history(history, kept, x, frames, channels);
}

/* A native-order buffer of `kind` ('d' or 'f'), C-contiguous; writable when asked. */
static int
get(PyObject *obj, Py_buffer *view, char kind, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (*format == '@' || *format == '=' || *format == (PY_LITTLE_ENDIAN ? '<' : '>')) {
        format++; /* native byte order, implied or said */
    }
    Py_ssize_t size = kind == 'd' ? (Py_ssize_t)sizeof(double) : (Py_ssize_t)sizeof(float);
    if (format[0] != kind || format[1] != '\0' || view->itemsize != size) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous %s array", name,
                     kind == 'd' ? "float64" : "float32");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* cascade() and cascade_frames(): y is float64 (channels, frames) but for FRAMES, where it is
 * float32 like x. */
static PyObject *
run_cascade(PyObject *const *args, int mode)
{
    Py_buffer sos, x, y, zi;
    if (get(args[0], &sos, 'd', 0, "sos") < 0) {
        return NULL;
    }
    if (get(args[1], &x, 'f', 0, "x") < 0) {
        PyBuffer_Release(&sos);
        return NULL;
    }
    if (get(args[2], &y, mode == FRAMES ? 'f' : 'd', 1, "y") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&sos);
        return NULL;
    }
    if (get(args[3], &zi, 'd', 1, "zi") < 0) {
        PyBuffer_Release(&y);
        PyBuffer_Release(&x);
        PyBuffer_Release(&sos);
        return NULL;
    }
    Py_ssize_t sections = sos.len / (6 * (Py_ssize_t)sizeof(double));
    Py_ssize_t values = zi.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t channels = sections ? values / (2 * sections) : 0;
    Py_ssize_t samples = x.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t frames = channels ? samples / channels : 0;
    const char *wrong = NULL;
    if (sections == 0 || sos.len != sections * 6 * (Py_ssize_t)sizeof(double)) {
        wrong = "sos must hold whole sections of 6 coefficients";
    } else if (channels == 0 || values != 2 * sections * channels) {
        wrong = "zi must hold 2 values per section per channel";
    } else if (samples != frames * channels) {
        wrong = "x must hold whole frames of every channel";
    } else if (y.len != samples * y.itemsize) {
        wrong = "y must have as many values as x";
    }
    double peak = 0.0;
    if (wrong == NULL) {
        const double *coefficients = sos.buf;
        const float *input = x.buf;
        void *output = y.buf;
        double *state = zi.buf;
        Py_BEGIN_ALLOW_THREADS
        if (channels == 2 && sections <= STEREO_MAX_SECTIONS) {
            peak = stereo(coefficients, sections, input, frames, output, state, mode);
        } else {
            peak = general(coefficients, sections, input, frames, channels, output, state, mode);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&zi);
    PyBuffer_Release(&y);
    PyBuffer_Release(&x);
    PyBuffer_Release(&sos);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    if (mode == FRAMES) {
        return PyFloat_FromDouble(peak);
    }
    Py_RETURN_NONE;
}

static PyObject *
cascade(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "cascade(sos, x, y, zi, energy) takes 5 arguments, got %zd",
                     nargs);
        return NULL;
    }
    int energy = PyObject_IsTrue(args[4]);
    if (energy < 0) {
        return NULL;
    }
    return run_cascade(args, energy ? ENERGY : FILTERED);
}

static PyObject *
cascade_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "cascade_frames(sos, x, y, zi) takes 4 arguments, got %zd",
                     nargs);
        return NULL;
    }
    return run_cascade(args, FRAMES);
}

/* Takes the four buffers of a call in order; on failure releases the ones already taken. */
static int
get_four(PyObject *const *args, Py_buffer *views, const char *kinds, const int *writable,
         const char *const *names)
{
    for (int i = 0; i < 4; i++) {
        if (get(args[i], &views[i], kinds[i], writable[i], names[i]) < 0) {
            while (i-- > 0) {
                PyBuffer_Release(&views[i]);
            }
            return -1;
        }
    }
    return 0;
}

static void
release_four(Py_buffer *views)
{
    for (int i = 3; i >= 0; i--) {
        PyBuffer_Release(&views[i]);
    }
}

static PyObject *
bank(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "bank(sos, counts, x, y, zi) takes 5 arguments, got %zd",
                     nargs);
        return NULL;
    }
    PyObject *counts_seq = PySequence_Fast(args[1], "counts must be a sequence of integers");
    if (counts_seq == NULL) {
        return NULL;
    }
    Py_ssize_t filters = PySequence_Fast_GET_SIZE(counts_seq);
    Py_ssize_t counts[BANK_MAX_SECTIONS], total = 0;
    const char *wrong = NULL;
    if (filters < 1 || filters > BANK_MAX_SECTIONS) {
        wrong = "counts must name 1 to 16 filters";
    }
    for (Py_ssize_t f = 0; wrong == NULL && f < filters; f++) {
        counts[f] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(counts_seq, f));
        if (counts[f] == -1 && PyErr_Occurred()) {
            Py_DECREF(counts_seq);
            return NULL;
        }
        if (counts[f] < 1) {
            wrong = "every filter needs at least one section";
        }
        total += counts[f];
    }
    Py_DECREF(counts_seq);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    PyObject *const buffers[4] = {args[0], args[2], args[3], args[4]};
    Py_buffer views[4];
    static const int writable[4] = {0, 0, 1, 1};
    static const char *const names[4] = {"sos", "x", "y", "zi"};
    if (get_four(buffers, views, "dfdd", writable, names) < 0) {
        return NULL;
    }
    Py_ssize_t values = views[3].len / (Py_ssize_t)sizeof(double);
    Py_ssize_t channels = values / (2 * total);
    Py_ssize_t samples = views[1].len / (Py_ssize_t)sizeof(float);
    Py_ssize_t frames = channels ? samples / channels : 0;
    if (views[0].len != total * 6 * (Py_ssize_t)sizeof(double)) {
        wrong = "sos must hold the counts' sections of 6 coefficients";
    } else if (channels == 0 || values != 2 * total * channels) {
        wrong = "zi must hold 2 values per section per channel";
    } else if (samples != frames * channels) {
        wrong = "x must hold whole frames of every channel";
    } else if (views[2].len != filters * samples * (Py_ssize_t)sizeof(double)) {
        wrong = "y must have as many values as x for every filter";
    }
    if (wrong == NULL) {
        const double *coefficients = views[0].buf;
        const float *input = views[1].buf;
        double *output = views[2].buf, *state = views[3].buf;
        Py_BEGIN_ALLOW_THREADS
        if (channels == 2 && filters == 3 && counts[0] == CHAIN_A && counts[1] == CHAIN_C &&
            counts[2] == CHAIN_Z) {
            chain_bank(coefficients, input, frames, output, state);
        } else if (channels == 2 && total <= BANK_MAX_SECTIONS) {
            stereo_bank(coefficients, counts, filters, input, frames, output, state);
        } else {
            for (Py_ssize_t f = 0, first = 0; f < filters; first += counts[f], f++) {
                general(coefficients + 6 * first, counts[f], input, frames, channels,
                        output + f * samples, state + 2 * channels * first, 1);
            }
        }
        Py_END_ALLOW_THREADS
    }
    release_four(views);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
true_peak(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "true_peak(taps, history, x, peak) takes 4 arguments, got %zd", nargs);
        return NULL;
    }
    Py_buffer views[4];
    static const int writable[4] = {0, 1, 0, 1};
    static const char *const names[4] = {"taps", "history", "x", "peak"};
    if (get_four(args, views, "ddfd", writable, names) < 0) {
        return NULL;
    }
    const char *wrong = NULL;
    if (views[0].ndim != 2 || views[1].ndim != 2 || views[2].ndim != 2 || views[3].ndim != 1) {
        wrong = "taps, history and x must be 2-dimensional, peak 1-dimensional";
    } else if (views[0].shape[0] != PEAK_PHASES) {
        wrong = "taps must have 3 rows, one per interpolated point";
    } else if (views[0].shape[1] < 2 || views[0].shape[1] > 64 || views[0].shape[1] % 2) {
        wrong = "taps must have an even number of columns from 2 to 64";
    } else if (views[1].shape[0] != views[0].shape[1] - 1) {
        wrong = "history must hold one frame fewer than taps has columns";
    } else if (views[1].shape[1] != views[2].shape[1] || views[2].shape[1] < 1) {
        wrong = "history and x must have the same channels";
    } else if (views[3].shape[0] != views[2].shape[0]) {
        wrong = "peak must have one value per frame of x";
    }
    if (wrong == NULL) {
        const double *taps = views[0].buf;
        Py_ssize_t span = views[0].shape[1];
        double *history = views[1].buf, *peak = views[3].buf;
        const float *input = views[2].buf;
        Py_ssize_t frames = views[2].shape[0], channels = views[2].shape[1];
        Py_BEGIN_ALLOW_THREADS
        interpolated_peak(taps, span, history, input, frames, channels, peak);
        Py_END_ALLOW_THREADS
    }
    release_four(views);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
skip_peak(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "skip_peak(history, x) takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    Py_buffer history, x;
    if (get(args[0], &history, 'd', 1, "history") < 0) {
        return NULL;
    }
    if (get(args[1], &x, 'f', 0, "x") < 0) {
        PyBuffer_Release(&history);
        return NULL;
    }
    const char *wrong = NULL;
    if (history.ndim != 2 || x.ndim != 2 || history.shape[1] != x.shape[1]) {
        wrong = "history and x must be (frames, channels) with the same channels";
    } else {
        advance_history(history.buf, history.shape[0], x.buf, x.shape[0], x.shape[1]);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&history);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
largest_magnitude(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer view;
    if (get(arg, &view, 'f', 0, "x") < 0) {
        return NULL;
    }
    const float *x = view.buf;
    Py_ssize_t count = view.len / (Py_ssize_t)sizeof(float);
    double largest = 0.0;
    Py_BEGIN_ALLOW_THREADS
    /* four lanes side by side (the largest is the same in any order); a NaN is remembered apart,
     * since a comparison drops it */
    typedef float quad __attribute__((vector_size(16)));
    typedef int quad_mask __attribute__((vector_size(16)));
    quad high4 = {0.0f, 0.0f, 0.0f, 0.0f};
    quad_mask nan4 = {0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 4 <= count; i += 4) {
        quad m;
        memcpy(&m, x + i, sizeof m);
        m = (quad)((quad_mask)m & 0x7fffffff); /* |m| */
        quad_mask larger = m > high4;
        high4 = (quad)(((quad_mask)m & larger) | ((quad_mask)high4 & ~larger));
        nan4 |= m != m;
    }
    float high = 0.0f;
    int nan = 0;
    for (int lane = 0; lane < 4; lane++) {
        high = high4[lane] > high ? high4[lane] : high;
        nan |= nan4[lane] != 0;
    }
    for (; i < count; i++) {
        float m = fabsf(x[i]);
        high = m > high ? m : high;
        nan |= m != m;
    }
    largest = nan ? (double)NAN : (double)high;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyFloat_FromDouble(largest);
}

/* The least of a and b, NaN when either is (numpy.minimum's rule: a non-finite sample must reach
 * the chain's test of the block's energy through every gain). */
static inline double
nan_min(double a, double b)
{
    return a != a || a < b ? a : b;
}

/* The larger of a and b, NaN when either is (numpy.maximum's rule). */
static inline double
nan_max(double a, double b)
{
    return a != a || a > b ? a : b;
}

/* An optional argument: None, or a buffer as get() takes it (view->buf NULL for None). */
static int
get_optional(PyObject *obj, Py_buffer *view, char kind, int writable, const char *name)
{
    if (obj == Py_None) {
        view->buf = NULL;
        view->obj = NULL;
        return 0;
    }
    return get(obj, view, kind, writable, name);
}

static void
release_optional(Py_buffer *view)
{
    if (view->buf != NULL) {
        PyBuffer_Release(view);
    }
}

/* A delay line of float32 frames as a ring: each frame of x comes out `length` frames later (the
 * ring's oldest, at `at`, goes out as x's takes its place), scaled by gain (float64, the product
 * rounded once to float32, as numpy multiplies a float32 array by a float64 one), then clipped to
 * +-limit (float32). Without out, x is only written (the ring keeps the stream's last `length`
 * frames). */
static Py_ssize_t
ring_delay(float *ring, Py_ssize_t length, Py_ssize_t at, const float *x, Py_ssize_t frames,
           Py_ssize_t channels, float *out, const double *gain, const float *limit)
{
    Py_ssize_t done = 0;
    if (out == NULL && frames > length) { /* only the last `length` frames stay */
        done = frames - length;
    }
    while (done < frames) {
        Py_ssize_t take = frames - done < length - at ? frames - done : length - at;
        size_t bytes = (size_t)(take * channels) * sizeof(float);
        if (out != NULL) {
            memcpy(out + done * channels, ring + at * channels, bytes);
        }
        memcpy(ring + at * channels, x + done * channels, bytes);
        at = (at + take) % length;
        done += take;
    }
    if (out != NULL && gain != NULL) {
        for (Py_ssize_t n = 0; n < frames; n++) {
            for (Py_ssize_t c = 0; c < channels; c++) {
                out[n * channels + c] = (float)((double)out[n * channels + c] * gain[n]);
            }
        }
    }
    if (out != NULL && limit != NULL) { /* numpy.clip's: a NaN passes */
        float high = *limit, low = -*limit;
        for (Py_ssize_t i = 0; i < frames * channels; i++) {
            out[i] = out[i] > high ? high : out[i] < low ? low : out[i];
        }
    }
    return at;
}

static PyObject *
delay(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError,
                     "delay(ring, x, out, gain, at, limit) takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[4]);
    if (at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    float limit = 0.0f;
    if (args[5] != Py_None) {
        limit = (float)PyFloat_AsDouble(args[5]);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer ring, x, out, gain;
    if (get(args[0], &ring, 'f', 1, "ring") < 0) {
        return NULL;
    }
    if (get(args[1], &x, 'f', 0, "x") < 0) {
        PyBuffer_Release(&ring);
        return NULL;
    }
    if (get_optional(args[2], &out, 'f', 1, "out") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&ring);
        return NULL;
    }
    if (get_optional(args[3], &gain, 'd', 0, "gain") < 0) {
        release_optional(&out);
        PyBuffer_Release(&x);
        PyBuffer_Release(&ring);
        return NULL;
    }
    const char *wrong = NULL;
    if (ring.ndim != 2 || x.ndim != 2 || ring.shape[0] < 1 || ring.shape[1] != x.shape[1]) {
        wrong = "ring and x must be (frames, channels) with the same channels, ring not empty";
    } else if (at < 0 || at >= ring.shape[0]) {
        wrong = "at must be a frame of the ring";
    } else if (out.buf != NULL && out.len != x.len) {
        wrong = "out must have the shape of x";
    } else if (gain.buf != NULL && (out.buf == NULL || gain.len != x.shape[0] * 8)) {
        wrong = "gain needs out and one value per frame of x";
    }
    if (wrong == NULL) {
        Py_ssize_t length = ring.shape[0], frames = x.shape[0], channels = x.shape[1];
        float *ring_frames = ring.buf, *out_frames = out.buf;
        const float *input = x.buf;
        const double *gains = gain.buf;
        Py_BEGIN_ALLOW_THREADS
        at = ring_delay(ring_frames, length, at, input, frames, channels, out_frames, gains,
                        args[5] == Py_None ? NULL : &limit);
        Py_END_ALLOW_THREADS
    }
    release_optional(&gain);
    release_optional(&out);
    PyBuffer_Release(&x);
    PyBuffer_Release(&ring);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return PyLong_FromSsize_t(at);
}

/* Running sums delayed by the length of `pending`, a block shorter than that: out gets the
 * pending sums' first frames, and pending moves on to the rest and the block, rebased to start
 * from its own first value (the values numpy's concatenate-and-subtract gave, bit for bit). */
static void
shift_running(double *pending, Py_ssize_t length, const double *running, Py_ssize_t frames,
              Py_ssize_t channels, double *out)
{
    for (Py_ssize_t c = 0; c < channels; c++) {
        double *restrict kept = pending + c * length;
        const double *restrict block = running + c * frames;
        double last = kept[length - 1], cut = kept[frames - 1];
        memcpy(out + c * frames, kept, (size_t)frames * sizeof(double));
        /* the stream of pending, then the block, from frame `frames` on, less the value before */
        for (Py_ssize_t j = 0; j < length - frames; j++) {
            kept[j] = kept[frames + j] - cut;
        }
        for (Py_ssize_t j = length - frames; j < length; j++) {
            kept[j] = (block[j - (length - frames)] + last) - cut;
        }
    }
}

static PyObject *
delay_running(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "delay_running(pending, running, out) takes 3 arguments, got %zd", nargs);
        return NULL;
    }
    Py_buffer pending, running, out;
    if (get(args[0], &pending, 'd', 1, "pending") < 0) {
        return NULL;
    }
    if (get(args[1], &running, 'd', 0, "running") < 0) {
        PyBuffer_Release(&pending);
        return NULL;
    }
    if (get(args[2], &out, 'd', 1, "out") < 0) {
        PyBuffer_Release(&running);
        PyBuffer_Release(&pending);
        return NULL;
    }
    const char *wrong = NULL;
    if (pending.ndim != 2 || running.ndim != 2 || out.ndim != 2 ||
        running.shape[0] != pending.shape[0] || out.len != running.len) {
        wrong = "pending, running and out must be (channels, frames), out shaped as running";
    } else if (running.shape[1] < 1 || running.shape[1] >= pending.shape[1]) {
        wrong = "running must hold at least one frame and fewer than pending";
    }
    if (wrong == NULL) {
        double *kept = pending.buf, *delayed = out.buf;
        const double *block = running.buf;
        Py_ssize_t channels = pending.shape[0], length = pending.shape[1];
        Py_ssize_t frames = running.shape[1];
        Py_BEGIN_ALLOW_THREADS
        shift_running(kept, length, block, frames, channels, delayed);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&running);
    PyBuffer_Release(&pending);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The gain smoother's steps (limiter.py: ForwardMin, GainSmoother; its docstring has the three),
 * each value computed as the numpy version computed it, the state going in and coming back out and
 * the arrays advanced in place.
 *
 * forward_min: out[k] = min(g[k .. k+L-1]) (van Herk/Gil-Werman, ForwardMin's docstring): prefix
 * minima restarting at each chunk of L, suffix minima of each chunk completed, in pending, which
 * holds the L - 1 values before the block and room for it. */
static double
forward_min_pass(const double *g, Py_ssize_t frames, double *pending, Py_ssize_t lookahead,
                 Py_ssize_t received, double prefix, double *out)
{
    Py_ssize_t keep = lookahead - 1, phase = received % lookahead; /* within its chunk */
    memcpy(pending + keep, g, (size_t)frames * sizeof(double));
    double least = prefix;
    for (Py_ssize_t i = 0; i < frames; i++) {
        least = phase ? nan_min(least, g[i]) : g[i];
        out[i] = least;
        phase = phase + 1 == lookahead ? 0 : phase + 1;
    }
    prefix = phase ? least : INFINITY;
    Py_ssize_t first = received - keep, end = received + frames;
    for (Py_ssize_t chunk_end = (received / lookahead + 1) * lookahead; chunk_end <= end;
         chunk_end += lookahead) {
        Py_ssize_t low = chunk_end - lookahead > first ? chunk_end - lookahead : first;
        double *chunk = pending + (low - first);
        for (Py_ssize_t j = chunk_end - low - 2; j >= 0; j--) {
            chunk[j] = nan_min(chunk[j + 1], chunk[j]);
        }
    }
    for (Py_ssize_t i = 0; i < frames; i++) {
        out[i] = nan_min(out[i], pending[i]);
    }
    memmove(pending, pending + frames, (size_t)keep * sizeof(double));
    return prefix;
}

static PyObject *
forward_min(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError,
                     "forward_min(g, pending, out, lookahead, received, prefix) takes 6 "
                     "arguments, got %zd",
                     nargs);
        return NULL;
    }
    Py_ssize_t lookahead = PyLong_AsSsize_t(args[3]), received = PyLong_AsSsize_t(args[4]);
    double prefix = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer g, pending, out;
    if (get(args[0], &g, 'd', 0, "g") < 0) {
        return NULL;
    }
    if (get(args[1], &pending, 'd', 1, "pending") < 0) {
        PyBuffer_Release(&g);
        return NULL;
    }
    if (get(args[2], &out, 'd', 1, "out") < 0) {
        PyBuffer_Release(&pending);
        PyBuffer_Release(&g);
        return NULL;
    }
    Py_ssize_t frames = g.len / (Py_ssize_t)sizeof(double);
    const char *wrong = NULL;
    if (out.len != g.len) {
        wrong = "out must have as many values as g";
    } else if (lookahead < 1 || received < lookahead - 1 ||
               pending.len / (Py_ssize_t)sizeof(double) < lookahead - 1 + frames) {
        wrong = "pending must hold lookahead - 1 values and g's; received counts the first ones";
    }
    if (wrong == NULL) {
        const double *gains = g.buf;
        double *kept = pending.buf, *least = out.buf;
        Py_BEGIN_ALLOW_THREADS
        prefix = forward_min_pass(gains, frames, kept, lookahead, received, prefix, least);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&pending);
    PyBuffer_Release(&g);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return PyFloat_FromDouble(prefix);
}

/* release: steps 2 and 3 on the forward minima m, in place. r[k] = min(m[k], min over j <= k of
 * (m[j] - j step), r_last + step) + k step), snapped to 1 within 1e-12 of it; then the box average
 * over `window`: r's running sums appended to the cumulative sums in box at box_at (the value
 * before it is the last one kept), each output the difference of two, over the window. */
static double
release_pass(double *m, Py_ssize_t frames, double step, double *box, Py_ssize_t window,
             double *r_last, Py_ssize_t *ones_run)
{
    double ceiling = *r_last + step, least = 0.0, total = 0.0, base = box[-1], lowest = 1.0;
    Py_ssize_t trailing = 0;
    int all_ones = 1;
    for (Py_ssize_t k = 0; k < frames; k++) {
        double steps = (double)k * step;
        least = k ? nan_min(least, m[k] - steps) : m[k] - steps;
        double r = nan_min(nan_min(least, ceiling) + steps, m[k]);
        if (r > 1.0 - 1e-12) {
            r = 1.0;
            trailing++;
        } else {
            trailing = 0;
            all_ones = 0;
        }
        *r_last = r;
        total = k ? total + r : r;
        box[k] = total + base;
        m[k] = (box[k] - box[k - window]) / (double)window;
        lowest = k ? nan_min(lowest, m[k]) : m[k];
    }
    *ones_run = all_ones ? *ones_run + frames : trailing;
    return lowest;
}

static PyObject *
release(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError,
                     "release(m, box, step, r_last, ones_run, window, box_at) takes 7 arguments, "
                     "got %zd",
                     nargs);
        return NULL;
    }
    double step = PyFloat_AsDouble(args[2]), r_last = PyFloat_AsDouble(args[3]);
    Py_ssize_t ones_run = PyLong_AsSsize_t(args[4]), window = PyLong_AsSsize_t(args[5]);
    Py_ssize_t box_at = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer m, box;
    if (get(args[0], &m, 'd', 1, "m") < 0) {
        return NULL;
    }
    if (get(args[1], &box, 'd', 1, "box") < 0) {
        PyBuffer_Release(&m);
        return NULL;
    }
    Py_ssize_t frames = m.len / (Py_ssize_t)sizeof(double);
    const char *wrong = NULL;
    if (window < 1 || box_at < window ||
        box_at + frames > box.len / (Py_ssize_t)sizeof(double)) {
        wrong = "box must hold a window before box_at and room for m after it";
    }
    double lowest = 1.0;
    if (wrong == NULL && frames > 0) {
        double *gains = m.buf, *sums = (double *)box.buf + box_at;
        Py_BEGIN_ALLOW_THREADS
        lowest = release_pass(gains, frames, step, sums, window, &r_last, &ones_run);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&box);
    PyBuffer_Release(&m);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return Py_BuildValue("dnd", r_last, ones_run, lowest);
}

/* The level ceiling's window sums (limiter.py: WindowSums, LevelCeiling), for its weightings'
 * channels side by side: `rows` rows of running sums (weightings x channels), each a block's from
 * its first frame on, and `buffer`, the same rows of cumulative sums of the stream, `stride`
 * values each. */
typedef struct {
    const double *running;
    Py_ssize_t frames;
    double *buffer;
    Py_ssize_t stride, rows;
} sums_rows;

/* Appends the block's running sums from frame `skip` on (rebased to start there, as
 * limiter.running_from does) to every row's cumulative sums at `at`. */
static void
append_rows(const sums_rows *sums, Py_ssize_t skip, Py_ssize_t at)
{
    for (Py_ssize_t row = 0; row < sums->rows; row++) {
        /* distinct arrays (restrict: the loops below vectorise) */
        const double *restrict running = sums->running + row * sums->frames;
        double *restrict cumulative = sums->buffer + row * sums->stride + at;
        double base = cumulative[-1];
        if (skip) {
            double before = running[skip - 1];
            for (Py_ssize_t n = skip; n < sums->frames; n++) {
                cumulative[n - skip] = (running[n] - before) + base;
            }
        } else {
            for (Py_ssize_t n = 0; n < sums->frames; n++) {
                cumulative[n] = running[n] + base;
            }
        }
    }
}

/* LevelCeiling._every_window_under's test: no trailing window ending in the block over its
 * row's limit, bounded by the sums of two neighbouring window-long chunks (the first chunk's
 * neighbour: the window - 1 values before the block, from the cumulative sums starting at
 * `start`). False on a NaN. */
static int
every_window_under(const sums_rows *sums, Py_ssize_t start, Py_ssize_t window,
                   const double *limits, Py_ssize_t channels)
{
    Py_ssize_t frames = sums->frames, whole = frames / window;
    for (Py_ssize_t row = 0; row < sums->rows; row++) {
        const double *running = sums->running + row * frames;
        const double *cumulative = sums->buffer + row * sums->stride + start;
        double limit = limits[row / channels];
        double before = cumulative[window - 1] - cumulative[0]; /* the trailing window - 1 */
        if (frames <= window) {
            if (!(before + running[frames - 1] <= limit)) {
                return 0;
            }
            continue;
        }
        double mark = 0.0;
        for (Py_ssize_t chunk = 1; chunk <= whole + 1; chunk++) {
            double next = chunk <= whole ? running[chunk * window - 1] : running[frames - 1];
            double sum = next - mark;
            if (!(before + sum <= limit)) {
                return 0;
            }
            before = sum;
            mark = next;
        }
    }
    return 1;
}

/* The rows of a (weightings, channels, frames) float64 array of running sums and of the window
 * sums' buffer, (weightings, channels, length), both C-contiguous (with `weighted` false any
 * leading dimensions, the same for both); 0, or -1 with an exception. */
static int
get_rows(PyObject *running_obj, PyObject *buffer_obj, Py_buffer *running, Py_buffer *buffer,
         sums_rows *sums, Py_ssize_t *channels, int weighted)
{
    if (get(running_obj, running, 'd', 0, "running") < 0) {
        return -1;
    }
    if (get(buffer_obj, buffer, 'd', 1, "buffer") < 0) {
        PyBuffer_Release(running);
        return -1;
    }
    int ndim = running->ndim, alike = ndim >= 1 && ndim == buffer->ndim && (!weighted || ndim == 3);
    Py_ssize_t rows = 1;
    for (int d = 0; alike && d < ndim - 1; d++) {
        alike = running->shape[d] == buffer->shape[d];
        rows *= running->shape[d];
    }
    if (!alike || running->shape[ndim - 1] < 1) {
        PyErr_SetString(PyExc_ValueError,
                        weighted ? "running and buffer must be (weightings, channels, frames) "
                                   "alike, running not empty"
                                 : "running and buffer must have the same rows, running not empty");
        PyBuffer_Release(buffer);
        PyBuffer_Release(running);
        return -1;
    }
    sums->running = running->buf;
    sums->frames = running->shape[ndim - 1];
    sums->buffer = buffer->buf;
    sums->stride = buffer->shape[ndim - 1];
    sums->rows = rows;
    *channels = ndim == 3 ? running->shape[1] : 1;
    return 0;
}

static PyObject *
window_test(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "window_test(running, buffer, start, window, limits) takes 5 arguments, got "
                     "%zd",
                     nargs);
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]), window = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer running, buffer, limits;
    sums_rows sums;
    Py_ssize_t channels;
    if (get_rows(args[0], args[1], &running, &buffer, &sums, &channels, 1) < 0) {
        return NULL;
    }
    if (get(args[4], &limits, 'd', 0, "limits") < 0) {
        PyBuffer_Release(&buffer);
        PyBuffer_Release(&running);
        return NULL;
    }
    const char *wrong = NULL;
    if (limits.len != running.shape[0] * (Py_ssize_t)sizeof(double)) {
        wrong = "limits must hold one value per weighting";
    } else if (window < 1 || start < 0 || start + window > sums.stride) {
        wrong = "the buffer must hold a window from start";
    }
    int under = 0;
    if (wrong == NULL) {
        under = every_window_under(&sums, start, window, limits.buf, channels);
    }
    PyBuffer_Release(&limits);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&running);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return PyBool_FromLong(under);
}

/* append_running(running, buffer, skip, at): the running sums from frame skip on into every row
 * of the buffer at at (WindowSums.extend). window_shares(running, buffer, at, window, limits,
 * required): the same from frame 0, then per frame the largest share of its limit any row's
 * trailing window holds, over = max over weightings of (max over channels of sum) / limit
 * (limits: window times each weighting's maximum mean square; numpy's order of operations);
 * required[n] = min(1, sqrt(1 / max(over, 1e-30))), the ceiling's required gain. Returns whether
 * any share is over 1 (or NaN). */
static PyObject *
append_or_share(PyObject *const *args, Py_ssize_t nargs, int share)
{
    const char *usage = share ? "window_shares(running, buffer, at, window, limits, required) "
                                "takes 6 arguments"
                              : "append_running(running, buffer, skip, at) takes 4 arguments";
    if (nargs != (share ? 6 : 4)) {
        PyErr_Format(PyExc_TypeError, "%s, got %zd", usage, nargs);
        return NULL;
    }
    Py_ssize_t skip = share ? 0 : PyLong_AsSsize_t(args[2]);
    Py_ssize_t at = PyLong_AsSsize_t(args[share ? 2 : 3]);
    Py_ssize_t window = share ? PyLong_AsSsize_t(args[3]) : 1;
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer running, buffer, limits, required;
    sums_rows sums;
    Py_ssize_t channels;
    if (get_rows(args[0], args[1], &running, &buffer, &sums, &channels, share) < 0) {
        return NULL;
    }
    limits.buf = required.buf = NULL;
    if (share && (get(args[4], &limits, 'd', 0, "limits") < 0 ||
                  get(args[5], &required, 'd', 1, "required") < 0)) {
        release_optional(&limits);
        PyBuffer_Release(&buffer);
        PyBuffer_Release(&running);
        return NULL;
    }
    const char *wrong = NULL;
    if (skip < 0 || skip >= sums.frames) {
        wrong = "skip must be a frame of running";
    } else if (window < 1 || at < window || at + sums.frames - skip > sums.stride) {
        wrong = "the buffer must hold a window before at and the block after it";
    } else if (share && limits.len != running.shape[0] * (Py_ssize_t)sizeof(double)) {
        wrong = "limits must hold one value per weighting";
    } else if (share && running.shape[0] > BANK_MAX_SECTIONS) {
        wrong = "at most 16 weightings";
    } else if (share && required.len != sums.frames * (Py_ssize_t)sizeof(double)) {
        wrong = "required must hold one value per frame";
    }
    double largest = 0.0; /* the largest share over 1, else 0 */
    if (wrong == NULL) {
        Py_BEGIN_ALLOW_THREADS
        append_rows(&sums, skip, at);
        if (share) {
            const double *limit = limits.buf;
            double *gain = required.buf;
            Py_ssize_t weightings = sums.rows / channels;
            double loudest[BANK_MAX_SECTIONS];
            for (Py_ssize_t n = 0; n < sums.frames; n++) {
                /* each weighting's loudest channel; a share needs dividing only when one is over
                 * its limit (or NaN): else every share is at most 1, and so is the gain */
                int under = 1;
                for (Py_ssize_t w = 0; w < weightings; w++) {
                    for (Py_ssize_t c = 0; c < channels; c++) {
                        const double *cumulative =
                            sums.buffer + (w * channels + c) * sums.stride + at + n;
                        double sum = cumulative[0] - cumulative[-window];
                        loudest[w] = c ? nan_max(loudest[w], sum) : sum;
                    }
                    under &= loudest[w] <= limit[w];
                }
                if (under) {
                    gain[n] = 1.0;
                    continue;
                }
                double over = loudest[0] / limit[0];
                for (Py_ssize_t w = 1; w < weightings; w++) {
                    over = nan_max(over, loudest[w] / limit[w]);
                }
                largest = nan_max(largest, over);
                double floored = over != over || over > 1e-30 ? over : 1e-30;
                double root = sqrt(1.0 / floored);
                gain[n] = root != root || root < 1.0 ? root : 1.0;
            }
        }
        Py_END_ALLOW_THREADS
    }
    release_optional(&required);
    release_optional(&limits);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&running);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return share ? PyBool_FromLong(!(largest <= 1.0)) : (Py_INCREF(Py_None), Py_None);
}

static PyObject *
append_running(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return append_or_share(args, nargs, 0);
}

static PyObject *
window_shares(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return append_or_share(args, nargs, 1);
}

/* The true-peak limiter's required gains (limiter.LookAheadLimiter): a frame bounds the interval
 * before it and the one after it, so its peak is the larger of the two (the first frame's: with
 * the last interval of the block before, Python's max()); at least `floor` (silence), then
 * min(1, ceiling / peak), numpy's NaN rules throughout. */
static PyObject *
required_gains(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "required_gains(interval, last_peak, ceiling, floor, required) takes 5 "
                     "arguments, got %zd",
                     nargs);
        return NULL;
    }
    double last = PyFloat_AsDouble(args[1]), ceiling = PyFloat_AsDouble(args[2]);
    double floor = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer interval, required;
    if (get(args[0], &interval, 'd', 0, "interval") < 0) {
        return NULL;
    }
    if (get(args[4], &required, 'd', 1, "required") < 0) {
        PyBuffer_Release(&interval);
        return NULL;
    }
    Py_ssize_t frames = interval.len / (Py_ssize_t)sizeof(double);
    const char *wrong = NULL;
    if (required.len != interval.len || frames < 1) {
        wrong = "required must have as many values as interval, at least one";
    } else {
        const double *peaks = interval.buf;
        double *gain = required.buf, before = peaks[0];
        double peak = last > before ? last : before; /* Python's max(before, last) */
        for (Py_ssize_t n = 0; n < frames; n++) {
            double here = peaks[n];
            if (n) {
                peak = nan_max(here, before);
            }
            before = here;
            gain[n] = nan_min(ceiling / nan_max(peak, floor), 1.0);
        }
        last = before;
    }
    PyBuffer_Release(&required);
    PyBuffer_Release(&interval);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    return PyFloat_FromDouble(last);
}

/* The exposure meter's seconds (meter.MelMeter.update_energy): a block's running sums of its
 * weighted squares, (channels, frames), added to the current second's energy per channel (sums,
 * in place) up to each second's end, where the loudest channel's energy of that second is
 * handed back and the sums start again; whole gets the block's energy per channel. The values,
 * and their order of operations, are numpy's in the version this replaced. */
static PyObject *
second_energy(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "second_energy(running, sums, whole, done, second) takes 5 arguments, got "
                     "%zd",
                     nargs);
        return NULL;
    }
    Py_ssize_t done = PyLong_AsSsize_t(args[3]), second = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer running, sums, whole;
    if (get(args[0], &running, 'd', 0, "running") < 0) {
        return NULL;
    }
    if (get(args[1], &sums, 'd', 1, "sums") < 0) {
        PyBuffer_Release(&running);
        return NULL;
    }
    if (get(args[2], &whole, 'd', 1, "whole") < 0) {
        PyBuffer_Release(&sums);
        PyBuffer_Release(&running);
        return NULL;
    }
    const char *wrong = NULL;
    Py_ssize_t channels = sums.len / (Py_ssize_t)sizeof(double);
    if (running.ndim != 2 || running.shape[0] != channels || whole.len != sums.len ||
        channels < 1) {
        wrong = "running must be (channels, frames), sums and whole one value per channel";
    } else if (second < 1 || done < 0 || done >= second) {
        wrong = "done must count the frames of the current second so far";
    }
    PyObject *seconds = wrong == NULL ? PyList_New(0) : NULL;
    double loudest = 0.0; /* whole's loudest channel, for the block's level */
    if (wrong == NULL && seconds != NULL) {
        const double *energy = running.buf;
        double *sum = sums.buf, *block = whole.buf;
        Py_ssize_t length = running.shape[1];
        for (Py_ssize_t c = 0; length && c < channels; c++) {
            block[c] += energy[c * length + length - 1];
        }
        for (Py_ssize_t start = 0; start < length;) {
            Py_ssize_t take = second - done < length - start ? second - done : length - start;
            for (Py_ssize_t c = 0; c < channels; c++) {
                const double *row = energy + c * length;
                double end = row[start + take - 1];
                sum[c] += start ? end - row[start - 1] : end;
            }
            done += take;
            start += take;
            if (done == second) {
                double loudest = sum[0];
                for (Py_ssize_t c = 1; c < channels; c++) {
                    loudest = nan_max(loudest, sum[c]);
                }
                PyObject *value = PyFloat_FromDouble(loudest);
                if (value == NULL || PyList_Append(seconds, value) < 0) {
                    Py_XDECREF(value);
                    Py_CLEAR(seconds);
                    break;
                }
                Py_DECREF(value);
                memset(sum, 0, (size_t)channels * sizeof(double));
                done = 0;
            }
        }
        loudest = block[0];
        for (Py_ssize_t c = 1; c < channels; c++) {
            loudest = nan_max(loudest, block[c]);
        }
    }
    PyBuffer_Release(&whole);
    PyBuffer_Release(&sums);
    PyBuffer_Release(&running);
    if (wrong != NULL) {
        PyErr_SetString(PyExc_ValueError, wrong);
        return NULL;
    }
    if (seconds == NULL) {
        return NULL;
    }
    return Py_BuildValue("nNd", done, seconds, loudest);
}

static PyMethodDef methods[] = {
    {"cascade", (PyCFunction)(void (*)(void))cascade, METH_FASTCALL,
     "cascade(sos, x, y, zi, energy): filter the (frames, channels) float32 block x through the "
     "sections sos into y, (channels, frames) float64, carrying the state zi, (channels, "
     "sections, 2); with energy true, y gets the running sum of the squares instead."},
    {"cascade_frames", (PyCFunction)(void (*)(void))cascade_frames, METH_FASTCALL,
     "cascade_frames(sos, x, y, zi): cascade() with the filtered block written to y as x is laid "
     "out, (frames, channels) float32, each value rounded once from float64; returns the largest "
     "magnitude of y (NaN when it holds a NaN)."},
    {"bank", (PyCFunction)(void (*)(void))bank, METH_FASTCALL,
     "bank(sos, counts, x, y, zi): the running energies of several cascades (counts[f] sections "
     "each, in sos one after the other) of the block x into y, (filters, channels, frames), in one "
     "pass; zi holds each filter's (channels, sections, 2) state in turn."},
    {"skip_peak", (PyCFunction)(void (*)(void))skip_peak, METH_FASTCALL,
     "skip_peak(history, x): the true-peak detector's history, (span - 1, channels) float64, "
     "moved on past the (frames, channels) float32 block x without measuring it."},
    {"largest_magnitude", (PyCFunction)largest_magnitude, METH_O,
     "largest_magnitude(x): the largest |value| of the C-contiguous float32 array x (0.0 when "
     "empty), NaN when it holds a NaN."},
    {"true_peak", (PyCFunction)(void (*)(void))true_peak, METH_FASTCALL,
     "true_peak(taps, history, x, peak): per frame of the (frames, channels) float32 block x, the "
     "largest magnitude over its channels of the sample and the points the phases of taps, "
     "(phases, span), interpolate after it, into peak; history, (span - 1, channels) float64, "
     "holds the frames before x and is advanced past it."},
    {"delay", (PyCFunction)(void (*)(void))delay, METH_FASTCALL,
     "delay(ring, x, out, gain, at, limit): the float32 (frames, channels) block x through the "
     "delay line ring, (length, channels), whose oldest frame is at; the delayed frames into out, "
     "times gain (float64, one per frame) unless None, clipped to +-limit unless None; out None "
     "only writes x. Returns the new at."},
    {"required_gains", (PyCFunction)(void (*)(void))required_gains, METH_FASTCALL,
     "required_gains(interval, last_peak, ceiling, floor, required): the limiter's required gain "
     "per frame from the true peaks of the intervals after each frame; returns the last one's."},
    {"delay_running", (PyCFunction)(void (*)(void))delay_running, METH_FASTCALL,
     "delay_running(pending, running, out): the running sums of a block, (channels, frames), "
     "delayed by pending's length (more than the block's), into out; pending advanced in place."},
    {"forward_min", (PyCFunction)(void (*)(void))forward_min, METH_FASTCALL,
     "forward_min(g, pending, out, lookahead, received, prefix): out[k] = min(g[k .. k+lookahead-1]) "
     "over the stream, lagging by lookahead - 1 (limiter.ForwardMin); pending advanced in place. "
     "Returns the new prefix."},
    {"release", (PyCFunction)(void (*)(void))release, METH_FASTCALL,
     "release(m, box, step, r_last, ones_run, window, box_at): the gain smoother's release and box "
     "average of the forward minima m, in place (limiter.GainSmoother). Returns (r_last, "
     "ones_run, the lowest gain)."},
    {"window_test", (PyCFunction)(void (*)(void))window_test, METH_FASTCALL,
     "window_test(running, buffer, start, window, limits): the level ceiling's quick test that no "
     "window ending in the block is over its weighting's limit (limiter.LevelCeiling)."},
    {"append_running", (PyCFunction)(void (*)(void))append_running, METH_FASTCALL,
     "append_running(running, buffer, skip, at): the block's running sums from frame skip on "
     "appended to the window sums' cumulative sums at at (limiter.WindowSums.extend)."},
    {"window_shares", (PyCFunction)(void (*)(void))window_shares, METH_FASTCALL,
     "window_shares(running, buffer, at, window, limits, required): append the block, then each "
     "frame's largest share of its limit and the ceiling's required gain; returns the largest "
     "share."},
    {"second_energy", (PyCFunction)(void (*)(void))second_energy, METH_FASTCALL,
     "second_energy(running, sums, whole, done, second): a block's running sums of weighted "
     "squares, (channels, frames), into the current second's energy per channel (sums), done "
     "frames of it so far; whole gets the block's. Returns (done, [the loudest channel's energy "
     "of each second completed], the loudest channel's value of whole)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cascade", "The safety chain's compiled filters and peak detector.", 0,
    methods,
};

PyMODINIT_FUNC
PyInit__cascade(void)
{
    return PyModule_Create(&module);
}

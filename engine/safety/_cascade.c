/* The A-weighting filter's second-order-section cascade, compiled (resonera.engine.safety._cascade).
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
 * (the level ceiling's A, C and unweighted measures), each bit for bit what cascade() gives it.
 * true_peak(taps, history, x, peak) and largest_magnitude(x): the limiter's true-peak detector
 * (the 4x polyphase interpolator of truepeak.py) and its quick test of a block, which cost the
 * chain more as numpy calls than any filter.
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

static void
stereo(const double *sos, Py_ssize_t sections, const float *x, Py_ssize_t frames, double *y,
       double *zi, int energy)
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
    double *left = y, *right = y + frames;
    pair sum = {0.0, 0.0};
    for (Py_ssize_t n = 0; n < frames; n++) {
        pair u = {x[2 * n], x[2 * n + 1]};
        for (Py_ssize_t k = 0; k < sections; k++) {
            pair out = b0[k] * u + s0[k];
            s0[k] = b1[k] * u - a1[k] * out + s1[k];
            s1[k] = b2[k] * u - a2[k] * out;
            u = out;
        }
        if (energy) {
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
}

static void
general(const double *sos, Py_ssize_t sections, const float *x, Py_ssize_t frames,
        Py_ssize_t channels, double *y, double *zi, int energy)
{
    for (Py_ssize_t ch = 0; ch < channels; ch++) {
        double *state = zi + 2 * sections * ch;
        double *out = y + frames * ch;
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
            if (energy) {
                sum += u * u;
                u = sum;
            }
            out[n] = u;
        }
    }
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
    /* keep the stream's last `kept` frames */
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
    Py_buffer sos, x, y, zi;
    if (get(args[0], &sos, 'd', 0, "sos") < 0) {
        return NULL;
    }
    if (get(args[1], &x, 'f', 0, "x") < 0) {
        PyBuffer_Release(&sos);
        return NULL;
    }
    if (get(args[2], &y, 'd', 1, "y") < 0) {
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
    } else if (y.len != samples * (Py_ssize_t)sizeof(double)) {
        wrong = "y must have as many values as x";
    }
    if (wrong == NULL) {
        const double *coefficients = sos.buf;
        const float *input = x.buf;
        double *output = y.buf, *state = zi.buf;
        Py_BEGIN_ALLOW_THREADS
        if (channels == 2 && sections <= STEREO_MAX_SECTIONS) {
            stereo(coefficients, sections, input, frames, output, state, energy);
        } else {
            general(coefficients, sections, input, frames, channels, output, state, energy);
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
    Py_RETURN_NONE;
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
        if (channels == 2 && total <= BANK_MAX_SECTIONS) {
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
    float high = 0.0f;
    int nan = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        float m = fabsf(x[i]);
        high = m > high ? m : high;
        nan |= m != m;
    }
    largest = nan ? (double)NAN : (double)high;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyFloat_FromDouble(largest);
}

static PyMethodDef methods[] = {
    {"cascade", (PyCFunction)(void (*)(void))cascade, METH_FASTCALL,
     "cascade(sos, x, y, zi, energy): filter the (frames, channels) float32 block x through the "
     "sections sos into y, (channels, frames) float64, carrying the state zi, (channels, "
     "sections, 2); with energy true, y gets the running sum of the squares instead."},
    {"bank", (PyCFunction)(void (*)(void))bank, METH_FASTCALL,
     "bank(sos, counts, x, y, zi): the running energies of several cascades (counts[f] sections "
     "each, in sos one after the other) of the block x into y, (filters, channels, frames), in one "
     "pass; zi holds each filter's (channels, sections, 2) state in turn."},
    {"largest_magnitude", (PyCFunction)largest_magnitude, METH_O,
     "largest_magnitude(x): the largest |value| of the C-contiguous float32 array x (0.0 when "
     "empty), NaN when it holds a NaN."},
    {"true_peak", (PyCFunction)(void (*)(void))true_peak, METH_FASTCALL,
     "true_peak(taps, history, x, peak): per frame of the (frames, channels) float32 block x, the "
     "largest magnitude over its channels of the sample and the points the phases of taps, "
     "(phases, span), interpolate after it, into peak; history, (span - 1, channels) float64, "
     "holds the frames before x and is advanced past it."},
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

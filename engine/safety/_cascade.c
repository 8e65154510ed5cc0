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
 * Every value is computed with exactly the operations of scipy's cascade (transposed direct form
 * II, in the same order) and built with -ffp-contract=off, so that no multiply-add is fused: the
 * output is bit for bit scipy's (tests/device/test_aweighting.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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

static PyMethodDef methods[] = {
    {"cascade", (PyCFunction)(void (*)(void))cascade, METH_FASTCALL,
     "cascade(sos, x, y, zi, energy): filter the (frames, channels) float32 block x through the "
     "sections sos into y, (channels, frames) float64, carrying the state zi, (channels, "
     "sections, 2); with energy true, y gets the running sum of the squares instead."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cascade", "The A-weighting filter's compiled cascade.", 0, methods,
};

PyMODINIT_FUNC
PyInit__cascade(void)
{
    return PyModule_Create(&module);
}

package dev.edgekit.demo.core;

/**
 * Affine int8/uint8 quantization as TFLite defines it: real = scale * (q - zero_point).
 * An INT8 edgekit .tflite has int8 input and output tensors (STACK.md: no float-I/O switch
 * without TensorFlow), so the app quantizes the preprocessed image and dequantizes the scores.
 */
public final class Quant {
    private Quant() {}

    /** Round half away from zero (TFLite's reference kernels use std::round). */
    static long roundHalfAway(double v) {
        return v < 0 ? -Math.round(-v) : Math.round(v);
    }

    /** q = clamp(round(x / scale) + zeroPoint) into [qmin, qmax], as bytes (two's complement for int8). */
    public static byte[] quantize(float[] x, float scale, int zeroPoint, boolean unsigned) {
        if (!(scale > 0)) {
            throw new IllegalArgumentException("quantization scale must be > 0, got " + scale);
        }
        int qmin = unsigned ? 0 : -128, qmax = unsigned ? 255 : 127;
        byte[] out = new byte[x.length];
        for (int i = 0; i < x.length; i++) {
            long q = roundHalfAway((double) x[i] / scale) + zeroPoint;
            if (q < qmin) {
                q = qmin;
            } else if (q > qmax) {
                q = qmax;
            }
            out[i] = (byte) q;
        }
        return out;
    }

    /** real = scale * (q - zeroPoint); bytes read as int8 or uint8. */
    public static float[] dequantize(byte[] q, float scale, int zeroPoint, boolean unsigned) {
        float[] out = new float[q.length];
        for (int i = 0; i < q.length; i++) {
            int v = unsigned ? (q[i] & 0xFF) : q[i];
            out[i] = scale * (v - zeroPoint);
        }
        return out;
    }
}

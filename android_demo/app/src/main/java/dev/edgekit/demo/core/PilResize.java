package dev.edgekit.demo.core;

/**
 * Pillow's {@code Image.resize(size, Image.BILINEAR)} on an 8-bit RGB image, reproduced exactly
 * (same output bytes), so the app feeds the model what edgekit's Python preprocessing fed it.
 *
 * <p>What Pillow does (src/libImaging/Resample.c, unchanged in substance since Pillow 4):
 * <ul>
 *   <li>a separable convolution with the triangle filter {@code max(0, 1 - |x|)}, whose support
 *       is widened by the scale when downscaling ({@code filterscale = max(1, in/out)}): this is an
 *       antialiasing filter, not the 2x2 "bilinear" of most image libraries (Android's
 *       Bitmap.createScaledBitmap included), which differs by many levels on a downscale;</li>
 *   <li>coefficients per output pixel, normalised to sum 1, then converted to fixed point with
 *       22 fractional bits ({@code PRECISION_BITS = 32 - 8 - 2}), rounded half away from zero;</li>
 *   <li>the horizontal pass first, each value rounded ({@code + 1 << 21}) and clipped to uint8,
 *       then the vertical pass on that uint8 image, rounded and clipped again;</li>
 *   <li>a pass is skipped when that dimension does not change; with neither, the image is copied.</li>
 * </ul>
 * The coefficient arithmetic is done in double in the same order as the C code, so the fixed-point
 * coefficients, and hence the bytes, are identical.
 */
public final class PilResize {
    private static final int PRECISION_BITS = 32 - 8 - 2;
    private static final double BILINEAR_SUPPORT = 1.0;

    private PilResize() {}

    /** Fixed-point filter taps: for output pixel i, {@code size[i]} taps starting at input {@code start[i]}. */
    static final class Coeffs {
        final int ksize;
        final int[] start;
        final int[] size;
        final int[] k; // outSize * ksize, fixed point

        Coeffs(int ksize, int[] start, int[] size, int[] k) {
            this.ksize = ksize;
            this.start = start;
            this.size = size;
            this.k = k;
        }
    }

    private static double triangle(double x) {
        if (x < 0.0) {
            x = -x;
        }
        if (x < 1.0) {
            return 1.0 - x;
        }
        return 0.0;
    }

    /** precompute_coeffs + normalize_coeffs_8bpc for the box [0, inSize) -> outSize. */
    static Coeffs coeffs(int inSize, int outSize) {
        float in0 = 0f, in1 = inSize; // Pillow's box is float
        double scale = (double) (in1 - in0) / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = BILINEAR_SUPPORT * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        double[] kk = new double[outSize * ksize];
        int[] start = new int[outSize];
        int[] size = new int[outSize];
        for (int xx = 0; xx < outSize; xx++) {
            double center = in0 + (xx + 0.5) * scale;
            double ww = 0.0;
            double ss = 1.0 / filterscale;
            int xmin = (int) (center - support + 0.5);
            if (xmin < 0) {
                xmin = 0;
            }
            int xmax = (int) (center + support + 0.5);
            if (xmax > inSize) {
                xmax = inSize;
            }
            xmax -= xmin;
            int base = xx * ksize;
            for (int x = 0; x < xmax; x++) {
                double w = triangle((x + xmin - center + 0.5) * ss);
                kk[base + x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++) {
                if (ww != 0.0) {
                    kk[base + x] /= ww;
                }
            }
            start[xx] = xmin;
            size[xx] = xmax;
        }
        int[] k = new int[kk.length];
        for (int x = 0; x < kk.length; x++) {
            double v = kk[x] * (1 << PRECISION_BITS);
            k[x] = kk[x] < 0 ? (int) (-0.5 + v) : (int) (0.5 + v);
        }
        return new Coeffs(ksize, start, size, k);
    }

    private static int clip8(int v) {
        int x = v >> PRECISION_BITS; // arithmetic shift, as in C on the platforms Pillow runs on
        return x < 0 ? 0 : (x > 255 ? 255 : x);
    }

    /**
     * Resize planar 8-bit channels (values 0..255, row-major, one array per channel).
     * Returns new planes of outW x outH.
     */
    public static int[][] resize(int[][] planes, int w, int h, int outW, int outH) {
        if (w <= 0 || h <= 0 || outW <= 0 || outH <= 0) {
            throw new IllegalArgumentException("image sizes must be positive: " + w + "x" + h + " -> " + outW + "x" + outH);
        }
        int[][] cur = planes;
        int curW = w;
        if (outW != w) { // horizontal pass
            Coeffs c = coeffs(w, outW);
            int[][] next = new int[planes.length][outW * h];
            for (int ch = 0; ch < planes.length; ch++) {
                int[] src = cur[ch], dst = next[ch];
                for (int y = 0; y < h; y++) {
                    int row = y * curW;
                    for (int xx = 0; xx < outW; xx++) {
                        int ss = 1 << (PRECISION_BITS - 1);
                        int s0 = c.start[xx], n = c.size[xx], kb = xx * c.ksize;
                        for (int x = 0; x < n; x++) {
                            ss += src[row + s0 + x] * c.k[kb + x];
                        }
                        dst[y * outW + xx] = clip8(ss);
                    }
                }
            }
            cur = next;
            curW = outW;
        }
        if (outH != h) { // vertical pass
            Coeffs c = coeffs(h, outH);
            int[][] next = new int[planes.length][curW * outH];
            for (int ch = 0; ch < planes.length; ch++) {
                int[] src = cur[ch], dst = next[ch];
                for (int yy = 0; yy < outH; yy++) {
                    int s0 = c.start[yy], n = c.size[yy], kb = yy * c.ksize;
                    for (int x = 0; x < curW; x++) {
                        int ss = 1 << (PRECISION_BITS - 1);
                        for (int y = 0; y < n; y++) {
                            ss += src[(s0 + y) * curW + x] * c.k[kb + y];
                        }
                        dst[yy * curW + x] = clip8(ss);
                    }
                }
            }
            cur = next;
        }
        if (cur == planes) { // neither pass: Pillow returns a copy
            int[][] copy = new int[planes.length][];
            for (int ch = 0; ch < planes.length; ch++) {
                copy[ch] = planes[ch].clone();
            }
            return copy;
        }
        return cur;
    }
}

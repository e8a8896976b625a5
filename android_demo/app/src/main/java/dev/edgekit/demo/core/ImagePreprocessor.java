package dev.edgekit.demo.core;

/**
 * edgekit's image preprocessing (edgekit/data.py, preprocess_image) on an ARGB pixel array:
 * RGB (alpha dropped, as PIL's convert("RGB") does) -> resize the shorter side to {@code resize}
 * with Pillow's BILINEAR ({@link PilResize}) -> center crop {@code crop} (left = (w - crop) / 2)
 * -> x / 255 -> (x - mean) / std -> CHW (NCHW input) or HWC (NHWC input), float32.
 *
 * <p>The float arithmetic is float32 in the same order as NumPy's, so for the same RGB bytes the
 * tensor is bit-identical to the Python one (see android_demo/testdata and PreprocessVectorTest).
 */
public final class ImagePreprocessor {

    /** The manifest's preprocess block plus the model input's layout. */
    public static final class Params {
        public final int resize;
        public final int crop;
        public final double[] mean;
        public final double[] std;
        public final String color;
        public final String layout; // "NCHW" or "NHWC"

        public Params(int resize, int crop, double[] mean, double[] std, String color, String layout) {
            this.resize = resize;
            this.crop = crop;
            this.mean = mean.clone();
            this.std = std.clone();
            this.color = color;
            this.layout = layout;
        }

        @Override
        public String toString() {
            return "resize " + resize + ", crop " + crop + ", mean " + java.util.Arrays.toString(mean)
                    + ", std " + java.util.Arrays.toString(std) + ", " + color + ", " + layout;
        }
    }

    private ImagePreprocessor() {}

    /** Python's round(): to nearest, ties to even (Math.rint), on the same double value. */
    static int pyRound(double v) {
        return (int) Math.rint(v);
    }

    /** The size Python resizes to: shorter side = resize, never below crop. Returns {w, h}. */
    public static int[] resizedSize(int w, int h, Params p) {
        double scale = (double) p.resize / Math.min(w, h);
        int nw = Math.max(p.crop, pyRound(w * scale));
        int nh = Math.max(p.crop, pyRound(h * scale));
        return new int[] {nw, nh};
    }

    /**
     * The resized and center-cropped RGB pixels, HWC uint8 (as ints 0..255): what PIL holds
     * before the float conversion.
     */
    public static int[] cropPixels(int[] argb, int w, int h, Params p) {
        if (argb.length < w * h) {
            throw new IllegalArgumentException("pixel array has " + argb.length + " values for a " + w + "x" + h + " image");
        }
        int[][] planes = new int[3][w * h];
        for (int i = 0; i < w * h; i++) {
            int c = argb[i];
            planes[0][i] = (c >> 16) & 0xFF;
            planes[1][i] = (c >> 8) & 0xFF;
            planes[2][i] = c & 0xFF;
        }
        int[] ns = resizedSize(w, h, p);
        int nw = ns[0], nh = ns[1];
        int[][] r = PilResize.resize(planes, w, h, nw, nh);
        int left = (nw - p.crop) / 2, top = (nh - p.crop) / 2; // both >= 0: nw, nh >= crop
        int c = p.crop;
        int[] out = new int[c * c * 3];
        for (int y = 0; y < c; y++) {
            for (int x = 0; x < c; x++) {
                int src = (top + y) * nw + (left + x);
                int dst = (y * c + x) * 3;
                out[dst] = r[0][src];
                out[dst + 1] = r[1][src];
                out[dst + 2] = r[2][src];
            }
        }
        return out;
    }

    /** The model input (batch dimension implied): float32 CHW for NCHW, HWC for NHWC. */
    public static float[] toTensor(int[] argb, int w, int h, Params p) {
        int[] px = cropPixels(argb, w, h, p);
        int c = p.crop;
        boolean nhwc = "NHWC".equals(p.layout);
        float[] mean = {(float) p.mean[0], (float) p.mean[1], (float) p.mean[2]};
        float[] std = {(float) p.std[0], (float) p.std[1], (float) p.std[2]};
        float[] out = new float[3 * c * c];
        for (int y = 0; y < c; y++) {
            for (int x = 0; x < c; x++) {
                for (int ch = 0; ch < 3; ch++) {
                    float v = (float) px[(y * c + x) * 3 + ch] / 255.0f;
                    v = (v - mean[ch]) / std[ch];
                    int idx = nhwc ? (y * c + x) * 3 + ch : ch * c * c + y * c + x;
                    out[idx] = v;
                }
            }
        }
        return out;
    }
}

package dev.edgekit.demo.core;

/** Top-k selection and softmax over a model's output scores. */
public final class TopK {
    private TopK() {}

    /**
     * Indices of the k largest scores, largest first; equal scores keep the lower index first;
     * NaN ranks below every number. k larger than the number of scores returns all of them.
     */
    public static int[] indices(float[] scores, int k) {
        int n = scores.length;
        int m = Math.max(0, Math.min(k, n));
        int[] best = new int[m];
        int filled = 0;
        for (int i = 0; i < n; i++) {
            // insertion into the sorted prefix best[0..filled)
            int pos = filled;
            while (pos > 0 && greater(scores, i, best[pos - 1])) {
                pos--;
            }
            if (pos >= m) {
                continue;
            }
            int end = Math.min(filled, m - 1);
            for (int j = end; j > pos; j--) {
                best[j] = best[j - 1];
            }
            best[pos] = i;
            if (filled < m) {
                filled++;
            }
        }
        return best;
    }

    /** Is scores[a] ranked strictly before scores[b] (b seen earlier, so ties keep b first)? */
    private static boolean greater(float[] scores, int a, int b) {
        float x = scores[a], y = scores[b];
        if (Float.isNaN(x)) {
            return false;
        }
        if (Float.isNaN(y)) {
            return true;
        }
        return x > y;
    }

    /** Numerically stable softmax (in double); NaN inputs give NaN outputs. */
    public static float[] softmax(float[] logits) {
        double max = Double.NEGATIVE_INFINITY;
        for (float v : logits) {
            if (v > max) {
                max = v;
            }
        }
        double sum = 0;
        double[] e = new double[logits.length];
        for (int i = 0; i < logits.length; i++) {
            e[i] = Math.exp(logits[i] - max);
            sum += e[i];
        }
        float[] out = new float[logits.length];
        for (int i = 0; i < logits.length; i++) {
            out[i] = (float) (e[i] / sum);
        }
        return out;
    }
}

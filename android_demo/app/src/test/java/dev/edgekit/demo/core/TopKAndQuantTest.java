package dev.edgekit.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import org.junit.Test;

public class TopKAndQuantTest {

    @Test
    public void topKOrdersByScoreThenIndex() {
        float[] s = {0.1f, 3f, -1f, 3f, 2f, Float.NaN, 7f};
        assertArrayEquals(new int[] {6, 1, 3, 4, 0}, TopK.indices(s, 5));
        assertArrayEquals(new int[] {6}, TopK.indices(s, 1));
        assertArrayEquals(new int[] {6, 1, 3, 4, 0, 2, 5}, TopK.indices(s, 50));
        assertArrayEquals(new int[0], TopK.indices(s, 0));
        assertArrayEquals(new int[0], TopK.indices(new float[0], 5));
    }

    @Test
    public void topKAgreesWithAFullSort() {
        java.util.Random r = new java.util.Random(0);
        for (int trial = 0; trial < 200; trial++) {
            int n = 1 + r.nextInt(40);
            final float[] s = new float[n];
            for (int i = 0; i < n; i++) {
                s[i] = r.nextInt(8); // many ties
            }
            Integer[] order = new Integer[n];
            for (int i = 0; i < n; i++) {
                order[i] = i;
            }
            java.util.Arrays.sort(order, new java.util.Comparator<Integer>() {
                @Override
                public int compare(Integer a, Integer b) {
                    int c = Float.compare(s[b], s[a]);
                    return c != 0 ? c : Integer.compare(a, b);
                }
            });
            int k = r.nextInt(n + 2);
            int[] got = TopK.indices(s, k);
            for (int i = 0; i < got.length; i++) {
                assertEquals(order[i].intValue(), got[i]);
            }
            assertEquals(Math.min(k, n), got.length);
        }
    }

    @Test
    public void softmaxIsStableAndSumsToOne() {
        float[] p = TopK.softmax(new float[] {1000f, 1000f, -1000f});
        assertEquals(0.5f, p[0], 1e-6f);
        assertEquals(0.5f, p[1], 1e-6f);
        assertEquals(0f, p[2], 1e-6f);
        float[] q = TopK.softmax(new float[] {1f, 2f, 3f});
        assertEquals(1.0, q[0] + q[1] + q[2], 1e-6);
        assertEquals(0.6652409f, q[2], 1e-6f);
    }

    @Test
    public void quantizeRoundsHalfAwayFromZeroAndClamps() {
        byte[] q = Quant.quantize(new float[] {0f, 0.25f, -0.25f, 0.75f, 100f, -100f}, 0.5f, 0, false);
        assertArrayEquals(new byte[] {0, 1, -1, 2, 127, -128}, q);
        byte[] u = Quant.quantize(new float[] {0f, 1f, -1f, 1000f}, 0.1f, 128, true);
        assertArrayEquals(new byte[] {(byte) 128, (byte) 138, (byte) 118, (byte) 255}, u);
        float[] back = Quant.dequantize(u, 0.1f, 128, true);
        assertEquals(1.0f, back[1], 1e-6f);
        assertEquals(12.7f, back[3], 1e-5f);
        float[] s = Quant.dequantize(new byte[] {-128, 0, 127}, 0.5f, -1, false);
        assertArrayEquals(new float[] {-63.5f, 0.5f, 64f}, s, 0f);
    }
}
